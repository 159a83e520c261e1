"""The hub's key rotation (``usreview.hub.hubkeys``) and a site's adoption of the new key
(``usreview.site.hubkeys``), without a running hub (``tests/test_site_hub.py`` has the
rotation end to end: a real hub, a site's gateway, a result)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
from pathlib import Path

import pytest

from usreview.envelope import KeyTransitionError, follow_transitions, load_public_keys
from usreview.hub import hubkeys
from usreview.hub.errors import StateError
from usreview.hub.hubkeys import load_hub_keys
from usreview.hub.state import HubState, open_state
from usreview.site.hubkeys import ADOPTED_FILE, adopt_hub_keys, followed_hub_keys


def _rotate(state: HubState, *, revoke: bool = False) -> None:
    from usreview.hub.commands import rotate_hub_key

    rotate_hub_key(state.root, revoke=revoke)


def test_rotations_keep_every_key_and_chain_their_transitions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from usreview.cli import main

    state = open_state(tmp_path / "state")
    first = load_public_keys(state.hub_pub)
    assert main(["hub", "rotate-key", "--state", str(state.root)]) == 0
    second = load_public_keys(state.hub_pub)
    out = capsys.readouterr().out
    assert f"the hub's key is now {second.key_id.hex()[:16]}" in out
    assert f"the replaced key {first.key_id.hex()[:16]} still opens" in out
    _rotate(state)
    keys = load_hub_keys(state)
    third = keys.current.public
    assert third.key_id == load_public_keys(state.hub_pub).key_id != second.key_id
    assert [k.key_id for k in keys.previous] == [second.key_id, first.key_id]  # newest first
    assert [k.key_id for k in keys.opening] == [third.key_id, second.key_id, first.key_id]
    folder = state.root / "hub-keys"
    assert folder.stat().st_mode & 0o777 == 0o700
    for key in (first, second, third):
        assert (folder / f"{key.key_id.hex()[:16]}.key").stat().st_mode & 0o777 == 0o600
    # A site pinned at the first key reaches the current one through the hub's answer.
    answer = keys.to_dict()
    assert answer["key_id"] == third.key_id.hex()
    reached = follow_transitions([first], answer["transitions"])
    assert [k.key_id for k in reached] == [second.key_id, third.key_id]
    lines = [json.loads(x) for x in state.audit_log.read_text().splitlines()]
    rotated = [x for x in lines if x["resource"] == "hub/key" and x["outcome"] == "rotated"]
    assert [x["detail"]["key_id"] for x in rotated] == [second.key_id.hex(), third.key_id.hex()]

    dest = tmp_path / "copy"  # a backup holds every key: the archive needs them
    assert main(["hub", "backup", str(dest), "--state", str(state.root)]) == 0
    copied = load_hub_keys(HubState(dest))
    assert [k.key_id for k in copied.opening] == [k.key_id for k in keys.opening]


def test_a_running_service_takes_the_rotated_key_at_its_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = open_state(tmp_path / "state")
    fd = os.open(state.root / "service.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running service holds it
        live = hubkeys.LiveHubKeys(state)
        before = live.get()
        assert live.get() is before  # unchanged: not read again
        _rotate(state)  # the service runs: a rotation needs no restart
        after = live.get()
        assert after.current.key_id == load_public_keys(state.hub_pub).key_id
        assert after.current.key_id != before.current.key_id
        assert [k.key_id for k in after.previous] == [before.current.key_id]
        assert live.get() is after
        # Keys that cannot be read are not taken: the ones held stay, until it is mended.
        good = state.hub_key.read_bytes()
        state.hub_key.write_text("not a key\n")
        assert live.get() is after
        state.hub_key.write_bytes(good)
        os.utime(state.hub_key, ns=(1, 1))  # rewritten: read again, the same key
        assert live.get().current.key_id == after.current.key_id
        # Nor when hub.pub, behind hub.key, cannot be rewritten (a full disk).
        stale = state.hub_pub.read_text()
        _rotate(state)
        state.hub_pub.write_text(stale)

        def full(path: Path, data: bytes, *, mode: int = 0o644) -> None:
            raise OSError(28, "No space left on device", str(path))

        monkeypatch.setattr(hubkeys, "replace_file", full)
        assert live.get().current.key_id == after.current.key_id
        monkeypatch.undo()
        assert live.get().current.key_id == load_public_keys(state.hub_pub).key_id
        assert live.get().current.key_id != after.current.key_id
    finally:
        os.close(fd)


def test_a_rotation_runs_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from usreview.cli import main

    state = open_state(tmp_path / "state")
    before = state.hub_key.read_bytes()
    with hubkeys.keys_lock(state):  # another rotation, or a backup copying the keys
        with pytest.raises(StateError, match=r"a key rotation or a backup of .* is running"):
            _rotate(state)
        assert main(["hub", "rotate-key", "--state", str(state.root)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "try again once it has ended" in err
    assert state.hub_key.read_bytes() == before and not (state.root / "hub-keys").exists()
    _rotate(state)  # once it has ended
    assert state.hub_key.read_bytes() != before


@pytest.mark.parametrize("cut_at", ["hub.key", "hub.pub"])
def test_a_rotation_cut_short_loses_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut_at: str
) -> None:
    state = open_state(tmp_path / "state")
    first = load_public_keys(state.hub_pub)
    real = hubkeys.replace_file

    def failing(path: Path, data: bytes, *, mode: int = 0o644) -> None:
        if path.name == cut_at:
            raise OSError(28, "No space left on device", str(path))
        real(path, data, mode=mode)

    monkeypatch.setattr(hubkeys, "replace_file", failing)
    with pytest.raises(StateError, match="could not be rotated"):
        _rotate(state)
    monkeypatch.setattr(hubkeys, "replace_file", real)
    keys = load_hub_keys(state)
    # Every key written survives: the transition published opens with one of them.
    published = follow_transitions([first], [t.to_dict() for t in keys.transitions])
    assert {k.key_id for k in published} <= {k.key_id for k in keys.opening}
    if cut_at == "hub.pub":  # hub.key was replaced: hub.pub follows it on reading
        assert keys.current.key_id == published[0].key_id
    else:
        assert keys.current.key_id == first.key_id
    assert load_public_keys(state.hub_pub).key_id == keys.current.key_id
    _rotate(state)  # and it can be done again
    final = load_hub_keys(state)
    assert follow_transitions([first], [t.to_dict() for t in final.transitions])[-1].key_id == (
        final.current.key_id
    )


def test_a_site_adopts_only_what_follows_from_its_pinned_key(tmp_path: Path) -> None:
    hub = open_state(tmp_path / "hub")
    pinned = load_public_keys(hub.hub_pub)
    _rotate(hub)
    _rotate(hub)
    keys = load_hub_keys(hub)
    site_state = tmp_path / "site-state"
    site_state.mkdir()
    assert followed_hub_keys(pinned, site_state) == [pinned]

    tampered = keys.to_dict()
    step = tampered["transitions"][1]  # type: ignore[index]
    raw = bytearray(base64.b64decode(step["proof"]))
    raw[5] ^= 1
    step["proof"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(KeyTransitionError, match="does not verify"):
        adopt_hub_keys(pinned, site_state, tampered)
    assert not (site_state / ADOPTED_FILE).exists()  # nothing kept from a refused chain
    stranger = open_state(tmp_path / "other-hub")
    assert adopt_hub_keys(load_public_keys(stranger.hub_pub), site_state, keys.to_dict()) == []

    new = adopt_hub_keys(pinned, site_state, keys.to_dict())
    assert [k.key_id for k in new] == [k.key_id for k in reversed(keys.previous[:1])] + [
        keys.current.key_id
    ]
    assert (site_state / ADOPTED_FILE).stat().st_mode & 0o777 == 0o600
    trusted = followed_hub_keys(pinned, site_state)  # read back and verified again
    assert [k.key_id for k in trusted] == [pinned.key_id, *(k.key_id for k in new)]
    assert adopt_hub_keys(pinned, site_state, keys.to_dict()) == []  # nothing new
    _rotate(hub)  # the hub rotates again: the site follows on from where it is
    newer = adopt_hub_keys(pinned, site_state, load_hub_keys(hub).to_dict())
    assert [k.key_id for k in newer] == [load_hub_keys(hub).current.key_id]
    assert len(followed_hub_keys(pinned, site_state)) == 4

    (site_state / ADOPTED_FILE).write_text("[{}]")
    with pytest.raises(KeyTransitionError, match="not a usreview key transition"):
        followed_hub_keys(pinned, site_state)


def test_a_revoking_rotation_leaves_the_site_trusting_only_the_new_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from usreview.cli import main
    from usreview.ingest.receipts import InvalidReceiptError, sign_batch_receipt, verify_receipt

    hub = open_state(tmp_path / "hub")
    pinned = load_public_keys(hub.hub_pub)
    _rotate(hub)
    site_state = tmp_path / "site-state"
    site_state.mkdir()
    adopt_hub_keys(pinned, site_state, load_hub_keys(hub).to_dict())
    stolen = load_hub_keys(hub).current
    assert load_hub_keys(hub).revoked == frozenset()

    assert main(["hub", "rotate-key", "--revoke", "--state", str(hub.root)]) == 0
    out = capsys.readouterr().out
    assert "revoked: the sites stop trusting 2 earlier key(s)" in out
    keys = load_hub_keys(hub)
    assert keys.revoked == {pinned.key_id, stolen.key_id}
    assert [k.key_id for k in keys.opening][1:] == [stolen.key_id, pinned.key_id]  # still open
    [event] = [json.loads(x) for x in hub.audit_log.read_text().splitlines()][-1:]
    assert event["actor"] == "usreview hub rotate-key --revoke"
    assert set(event["detail"]["revoked"]) == {pinned.key_id.hex(), stolen.key_id.hex()}

    assert [k.key_id for k in adopt_hub_keys(pinned, site_state, keys.to_dict())] == [
        keys.current.key_id
    ]
    assert [k.key_id for k in followed_hub_keys(pinned, site_state)] == [keys.current.key_id]
    # A receipt signed by the stolen key is refused now; by the current one, it verifies.
    trusted = followed_hub_keys(pinned, site_state)
    with pytest.raises(InvalidReceiptError):
        verify_receipt(sign_batch_receipt(stolen, "clinic", []), trusted, site="clinic")
    receipt = sign_batch_receipt(keys.current, "clinic", [])
    assert verify_receipt(receipt, trusted, site="clinic")["kind"] == "batch"
    # A later routine rotation keeps the revocation: the earlier keys stay untrusted.
    _rotate(hub)
    assert load_hub_keys(hub).revoked == {pinned.key_id, stolen.key_id}
    adopt_hub_keys(pinned, site_state, load_hub_keys(hub).to_dict())
    assert len(followed_hub_keys(pinned, site_state)) == 2


def test_site_status_shows_the_hub_key_followed_and_a_damaged_record(tmp_path: Path) -> None:
    from usreview.site import format_status, init_site, load_config, read_status
    from usreview.site.status import CheckState, check_status

    hub = open_state(tmp_path / "hub")
    site = init_site("clinic", "http://127.0.0.1:9", tmp_path / "site", hub_public_key=hub.hub_pub)
    (tmp_path / "site" / "token").write_text("unused\n")
    (tmp_path / "site" / "token").chmod(0o600)
    config = load_config(site.config)
    pinned = config.load_pinned_hub_key()
    status = read_status(config)
    short = pinned.key_id.hex()[:16]
    assert status.hub_key == {"pinned": short, "current": short, "trusted": 1,
                              "pinned_revoked": False}  # fmt: skip
    assert f"hub key       {pinned.key_id.hex()[:16]} (pinned)" in format_status(status)

    _rotate(hub)
    _rotate(hub)
    config.state.mkdir(parents=True, exist_ok=True)
    adopt_hub_keys(pinned, config.state, load_hub_keys(hub).to_dict())
    current = load_hub_keys(hub).current.key_id.hex()[:16]
    assert config.load_hub_key().key_id.hex()[:16] == current  # what the site seals to
    status = read_status(config)
    assert status.to_dict()["hub_key"]["trusted"] == 3
    assert (
        f"hub key       {current} (followed from the pinned {pinned.key_id.hex()[:16]} "
        "in state/hub-keys.json; 3 key(s) trusted)"
    ) in format_status(status)
    assert "hub's key" not in check_status(status, 3600)[1]

    _rotate(hub, revoke=True)  # a key believed stolen: only the new one is trusted now
    adopt_hub_keys(pinned, config.state, load_hub_keys(hub).to_dict())
    current = load_hub_keys(hub).current.key_id.hex()[:16]
    status = read_status(config)
    assert (
        f"hub key       {current} (followed from the pinned {pinned.key_id.hex()[:16]} "
        "in state/hub-keys.json; 1 key(s) trusted, the pinned one revoked)"
    ) in format_status(status)

    (config.state / ADOPTED_FILE).write_text("not json")
    status = read_status(config)
    assert "not JSON" in status.hub_key["error"]
    state, line = check_status(status, 3600)
    assert state is CheckState.CRITICAL and "the hub's key: hub.public_key:" in line


# -- the hub's next TLS certificate ----------------------------------------------------


def test_the_self_signed_certificate_gets_a_successor_a_month_ahead(tmp_path: Path) -> None:
    import datetime as dt

    from usreview.hub.tls import certificate_expiry, ensure_certificate

    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    successor = (tmp_path / "tls-next.crt", tmp_path / "tls-next.key")
    t0 = dt.datetime.now(dt.UTC)

    def at(days: float) -> str | None:
        return ensure_certificate(
            cert, key, ["127.0.0.1"], successor=successor, now=t0 + dt.timedelta(days=days)
        )[2]

    assert at(0) == "new"
    first = cert.read_bytes()
    expires = certificate_expiry(cert)
    assert expires is not None
    left = (expires - t0).days  # 397
    assert at(left - 60) is None and not successor[0].exists()
    assert at(left - 29) == "successor"  # within EXPIRY_NOTICE_DAYS: the next one, ahead
    assert cert.read_bytes() == first and successor[1].stat().st_mode & 0o777 == 0o600
    announced = successor[0].read_bytes()
    assert at(left - 20) is None and successor[0].read_bytes() == announced  # kept
    assert at(left - 6) == "promoted"  # a week before expiry: the one the sites fetched
    assert cert.read_bytes() == announced and not successor[0].exists()
    assert key.stat().st_mode & 0o777 == 0o600
    assert at(left + 345) == "successor"  # the promoted one's own successor, in turn
    moved = ensure_certificate(cert, key, ["10.1.2.3"], successor=successor, now=t0)[2]
    assert moved == "new" and not successor[0].exists()  # made for other hosts: dropped
    # Without a successor (the site's DICOM TLS pair), a week before expiry: a new one.
    alone = (tmp_path / "a.crt", tmp_path / "a.key")
    assert ensure_certificate(*alone, ["127.0.0.1"], now=t0)[2] == "new"
    assert ensure_certificate(*alone, ["127.0.0.1"], now=t0 + dt.timedelta(days=391))[2] == "new"


def test_next_certificate_is_announced_withdrawn_and_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from usreview.cli import main
    from usreview.hub.tls import ensure_certificate

    state = open_state(tmp_path / "state")
    made = ensure_certificate(tmp_path / "next.crt", tmp_path / "next.key", ["hub.example"])[0]
    argv = ["hub", "next-certificate", "--state", str(state.root)]
    assert main([*argv, str(made)]) == 0
    assert state.tls_next_cert.read_bytes() == made.read_bytes()
    assert "announced to the sites as the hub's next certificate" in capsys.readouterr().out
    answer = load_hub_keys(state).to_dict(state.tls_next_cert.read_text())
    assert answer["next_certificate"]["text"] == made.read_text()  # type: ignore[index]
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    assert main([*argv, str(junk)]) == 2
    assert capsys.readouterr().err == f"usreview: error: {junk}: not PEM certificates\n"
    assert state.tls_next_cert.read_bytes() == made.read_bytes()  # left as it was
    assert main([*argv, "--clear"]) == 0 and not state.tls_next_cert.exists()
    assert main(argv) == 2  # neither: one line
    lines = [json.loads(x) for x in state.audit_log.read_text().splitlines()]
    assert [x["outcome"] for x in lines if x["resource"] == "hub/next-certificate"] == [
        "announced",
        "withdrawn",
    ]


def test_a_site_trusts_the_announced_certificate_only_when_signed(tmp_path: Path) -> None:
    import datetime as dt

    from usreview.envelope import HUB_CERTIFICATE, generate_keys, sign_announcement
    from usreview.hub.tls import ensure_certificate
    from usreview.site import format_status, init_site, load_config, read_status
    from usreview.site.client import _tls_context
    from usreview.site.hubkeys import ANNOUNCED_CERTIFICATES, adopt_hub_certificate
    from usreview.site.status import check_status

    hub = open_state(tmp_path / "hub")
    now = dt.datetime.now(dt.UTC)
    pinned, _, _ = ensure_certificate(hub.tls_cert, hub.tls_key, ["127.0.0.1"],
                                      now=now - dt.timedelta(days=380))  # fmt: skip
    nxt, _, _ = ensure_certificate(hub.tls_next_cert, hub.tls_next_key, ["127.0.0.1"])
    folder = tmp_path / "site"
    site = init_site("clinic", "https://127.0.0.1:9", folder, hub_public_key=hub.hub_pub,
                     hub_certificate=pinned)  # fmt: skip
    (folder / "token").write_text("unused\n")
    (folder / "token").chmod(0o600)
    config = load_config(site.config)
    config.state.mkdir(parents=True, exist_ok=True)
    assert len(_tls_context(config).get_ca_certs()) == 1
    warned = check_status(read_status(config), 3600)[1]
    assert "the hub's pinned certificate (hub.certificate" in warned  # 17 days left

    trusted = config.load_hub_keys()
    forged = sign_announcement(generate_keys("hub"), HUB_CERTIFICATE, nxt.read_text())
    with pytest.raises(KeyTransitionError, match="not signed by a trusted key"):
        adopt_hub_certificate(trusted, config.state, forged)
    announced = load_hub_keys(hub).to_dict(nxt.read_text())["next_certificate"]
    altered = dict(announced)  # type: ignore[call-overload]
    altered["text"] = pinned.read_text()
    with pytest.raises(KeyTransitionError, match="does not verify"):
        adopt_hub_certificate(trusted, config.state, altered)
    assert not (config.state / ANNOUNCED_CERTIFICATES).exists()

    assert adopt_hub_certificate(trusted, config.state, announced) is True
    assert adopt_hub_certificate(trusted, config.state, announced) is False  # known
    assert len(_tls_context(config).get_ca_certs()) == 2  # pinned and announced
    status = read_status(config)
    assert "certificate   hub.announced (" in format_status(status)
    assert "hub.certificate" not in check_status(status, 3600)[1]  # its successor is here
