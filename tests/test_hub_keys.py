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
from usreview.hub.errors import HubError, StateError
from usreview.hub.hubkeys import load_hub_keys
from usreview.hub.state import HubState, open_state
from usreview.site.hubkeys import ADOPTED_FILE, adopt_hub_keys, followed_hub_keys


def _rotate(state: HubState) -> None:
    from usreview.hub.commands import rotate_hub_key

    rotate_hub_key(state.root)


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


def test_rotation_is_refused_while_the_service_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from usreview.cli import main

    state = open_state(tmp_path / "state")
    before = state.hub_key.read_bytes()
    fd = os.open(state.root / "service.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running service holds it
        with pytest.raises(HubError, match="is running"):
            _rotate(state)
        assert main(["hub", "rotate-key", "--state", str(state.root)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "stop it, rotate the key, then start it" in err
    finally:
        os.close(fd)
    assert state.hub_key.read_bytes() == before and not (state.root / "hub-keys").exists()
    _rotate(state)  # once it has stopped
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
