"""Site key rotation at the hub and at the site, with real keys and envelopes (no hub)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from usreview.envelope import (
    KeyRing,
    NotARecipientError,
    PrivateKeys,
    PublicKeys,
    RetiredKeyError,
    UntrustedSenderError,
    generate_keys,
    seal,
    unseal,
    write_key_pair,
)
from usreview.envelope.keyring import KeyState
from usreview.hub.api.sitekeys import DEFAULT_GRACE_SECONDS, SiteKeyFiles
from usreview.hub.errors import AccountError
from usreview.site import init_site, load_config
from usreview.site.config import rotate_site_key
from usreview.site.errors import SiteConfigError

HUB = generate_keys("hub")
GRACE = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def sealed(sender: PrivateKeys, payload: bytes = b"instance") -> bytes:
    out = io.BytesIO()
    seal(io.BytesIO(payload), out, sender=sender, recipients=[HUB.public])
    return out.getvalue()


def opens(envelope: bytes, ring: KeyRing, tmp: Path, recipient: PrivateKeys = HUB) -> bytes:
    out = tmp / f"out{len(list(tmp.iterdir()))}"
    unseal(io.BytesIO(envelope), out, recipient=recipient, keyring=ring)
    return out.read_bytes()


@pytest.fixture
def rotated(tmp_path: Path) -> tuple[SiteKeyFiles, Clock, PrivateKeys, PrivateKeys]:
    clock = Clock()
    folder = tmp_path / "sites"
    old, new = generate_keys("sitea"), generate_keys("sitea")
    write_key_pair(old, folder)
    keys = SiteKeyFiles(folder, clock=clock)
    assert keys["sitea"].key_id == old.key_id and not keys.previous("sitea")
    replaced = keys.rotate("sitea", new.public, GRACE)
    assert replaced.public.key_id == old.key_id
    assert replaced.accepted_until - replaced.replaced_at == GRACE
    return keys, clock, old, new


def test_uploads_verify_with_the_old_key_only_during_the_grace(
    rotated: tuple[SiteKeyFiles, Clock, PrivateKeys, PrivateKeys], tmp_path: Path
) -> None:
    keys, clock, old, new = rotated
    before = sealed(old, b"sealed before the rotation")
    after = sealed(new, b"sealed after")
    ring = keys.uploads["sitea"]
    assert ring.get(old.key_id).state is KeyState.RETIRED  # type: ignore[union-attr]
    assert opens(before, ring, tmp_path) == b"sealed before the rotation"
    assert opens(after, ring, tmp_path) == b"sealed after"
    clock.now += GRACE  # the grace period is over
    ring = keys.uploads["sitea"]
    with pytest.raises(UntrustedSenderError):
        opens(before, ring, tmp_path)
    assert opens(after, ring, tmp_path) == b"sealed after"
    # What was stored opens with every key the site had (it verified on arrival).
    stored = keys.stored_ring("sitea")
    assert stored.get(old.key_id).state is KeyState.RETIRED  # type: ignore[union-attr]
    assert stored.get(new.key_id).state is KeyState.ACTIVE  # type: ignore[union-attr]
    assert opens(before, stored, tmp_path) == b"sealed before the rotation"
    # The current key alone trusts nothing older.
    with pytest.raises(UntrustedSenderError):
        opens(before, KeyRing([keys["sitea"]]), tmp_path)


def test_results_are_sealed_to_the_newest_key_only(
    rotated: tuple[SiteKeyFiles, Clock, PrivateKeys, PrivateKeys], tmp_path: Path
) -> None:
    keys, _, old, new = rotated
    site_key = keys.current("sitea")
    assert type(site_key) is PublicKeys and site_key == keys["sitea"]
    assert site_key.key_id == new.key_id
    # A retired key never seals: the ring refuses it as a recipient.
    with pytest.raises(RetiredKeyError):
        keys.stored_ring("sitea").check_for_sealing(old.public, "recipient")
    keys.stored_ring("sitea").check_for_sealing(site_key, "recipient")
    out = io.BytesIO()
    seal(io.BytesIO(b"result"), out, sender=HUB, recipients=[site_key])
    hub_ring = KeyRing([HUB.public])
    assert opens(out.getvalue(), hub_ring, tmp_path, recipient=new) == b"result"
    with pytest.raises(NotARecipientError):
        opens(out.getvalue(), hub_ring, tmp_path, recipient=old)


def test_a_second_rotation_keeps_the_history_and_refuses_reused_keys(
    rotated: tuple[SiteKeyFiles, Clock, PrivateKeys, PrivateKeys], tmp_path: Path
) -> None:
    keys, clock, old, new = rotated
    third = generate_keys("sitea")
    clock.now += 10
    keys.rotate("sitea", third.public, 0)  # compromised: refused at once for uploads
    assert [p.public.key_id for p in keys.previous("sitea")] == [new.key_id, old.key_id]
    ring = keys.uploads["sitea"]
    assert ring.get(new.key_id) is None and ring.get(old.key_id) is not None  # old: in grace
    assert [k.public.key_id for k in ring] == [third.key_id, old.key_id]
    stored = keys.stored_ring("sitea")  # every key the site had, grace or not
    assert {k.public.key_id: k.state for k in stored} == {
        third.key_id: KeyState.ACTIVE,
        new.key_id: KeyState.RETIRED,
        old.key_id: KeyState.RETIRED,
    }
    clock.now += GRACE
    assert [k.public.key_id for k in keys.uploads["sitea"]] == [third.key_id]
    assert len(keys.stored_ring("sitea")) == 3
    for reused in (old, new, third):
        with pytest.raises(AccountError, match="current or an earlier key"):
            keys.rotate("sitea", reused.public)
    with pytest.raises(AccountError, match="no key"):
        keys.rotate("siteb", generate_keys("siteb").public)
    with pytest.raises(AccountError, match="negative"):
        keys.rotate("sitea", generate_keys("sitea").public, -1)
    assert list(keys) == ["sitea"]  # the history file is not a site
    assert DEFAULT_GRACE_SECONDS == 7 * 86400


def test_a_damaged_history_makes_the_site_unusable_not_the_service(
    rotated: tuple[SiteKeyFiles, Clock, PrivateKeys, PrivateKeys],
) -> None:
    keys, *_ = rotated
    (keys.folder / "sitea.previous.json").write_text("{not json")
    assert keys.get("sitea") is None and "sitea" not in keys.uploads
    with pytest.raises(KeyError):
        keys.stored_ring("sitea")


def test_the_site_rotates_its_key_and_keeps_the_old_one(tmp_path: Path) -> None:
    site = init_site("clinic", "https://hub.example.org", tmp_path / "clinic")
    before = load_config(site.config)
    new = rotate_site_key(before, "20261126T120000Z")
    after = load_config(site.config)
    assert after.private_key == (tmp_path / "clinic/keys/20261126T120000Z/clinic.key").resolve()
    assert after.load_private_keys().key_id.hex() == new.key_id != site.key_id
    assert before.private_key.exists()  # results sealed to it before the hub switched
    assert before.retired_private_keys == ()
    assert after.retired_private_keys == (before.private_key,)
    assert [k.key_id for k in after.load_retired_private_keys()] == [
        before.load_private_keys().key_id
    ]
    assert (after.path.stat().st_mode & 0o077) == 0
    changed = {"private_key", "retired_private_keys"}
    assert {k: v for k, v in vars(after).items() if k not in changed} == {
        k: v for k, v in vars(before).items() if k not in changed
    }
    with pytest.raises(SiteConfigError, match="exists"):
        rotate_site_key(after, "20261126T120000Z")
    # A second rotation puts the replaced key first, also when the list spans lines.
    text = after.path.read_text()
    after.path.write_text(text.replace('retired_keys = ["', 'retired_keys = [\n  "'))
    rotate_site_key(load_config(site.config), "20261127T120000Z")
    third = load_config(site.config)
    assert third.retired_private_keys == (after.private_key, before.private_key)
    assert third.private_key.parent.name == "20261127T120000Z"
    assert "keys/20261126T120000Z/clinic.key" in third.path.read_text()  # relative paths


def test_site_rotate_key_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from usreview.cli import main

    folder = tmp_path / "clinic"
    init = ["site", "init", "clinic", "--hub", "https://hub.example.org", "--dir", str(folder)]
    assert main(init) == 0
    first = load_config(folder / "site.toml").load_private_keys().key_id.hex()
    capsys.readouterr()
    assert main(["site", "rotate-key", "--config", str(folder / "site.toml")]) == 0
    out, err = capsys.readouterr()
    now = load_config(folder / "site.toml").load_private_keys().key_id.hex()
    assert now != first and f"site key id {now}" in out
    assert "add-site clinic --public-key clinic.pub --rotate" in err
