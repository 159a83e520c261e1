"""Identity keys, key files (mode 0600, passphrases) and key rings."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from usreview.envelope import (
    KeyFileError,
    KeyRing,
    KeyState,
    PassphraseError,
    RetiredKeyError,
    RevokedKeyError,
    UntrustedSenderError,
    generate_keys,
    load_private_keys,
    load_public_keys,
    write_key_pair,
)
from usreview.envelope.atomic import new_file


def test_key_files_round_trip_and_mode(tmp_path: Path) -> None:
    keys = generate_keys("site-a")
    key_path = write_key_pair(keys, tmp_path)
    assert key_path == tmp_path / "site-a.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "site-a.pub").stat().st_mode) == 0o644
    loaded = load_private_keys(key_path)
    assert loaded.key_id == keys.key_id and loaded.name == "site-a"
    assert load_public_keys(tmp_path / "site-a.pub").key_id == keys.key_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site-a.key", "site-a.pub"]


def test_private_file_is_never_visible_with_a_wider_mode(tmp_path: Path) -> None:
    """The file is created 0600 (not chmod-ed later), whatever the umask."""
    old = os.umask(0)
    try:
        write_key_pair(generate_keys("k"), tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    write_key_pair(generate_keys("k"), tmp_path)
    before = (tmp_path / "k.key").read_bytes()
    with pytest.raises(FileExistsError):
        write_key_pair(generate_keys("k"), tmp_path)
    assert (tmp_path / "k.key").read_bytes() == before
    (tmp_path / "k.key").unlink()
    with pytest.raises(FileExistsError):  # .pub alone is enough to refuse
        write_key_pair(generate_keys("k"), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pub"]


def test_passphrase_protected(tmp_path: Path) -> None:
    keys = generate_keys("hub")
    path = write_key_pair(keys, tmp_path, passphrase=b"correct horse")
    text = path.read_text()
    assert "scrypt-aes256gcm" in text
    assert keys.x25519.private_bytes_raw().hex() not in text
    assert load_private_keys(path, b"correct horse").key_id == keys.key_id
    with pytest.raises(PassphraseError, match="passphrase-protected"):
        load_private_keys(path)
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        load_private_keys(path, b"wrong")


def test_refuses_a_private_file_readable_by_others(tmp_path: Path) -> None:
    path = write_key_pair(generate_keys("k"), tmp_path)
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_private_keys(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\xff\xfe",
        b"usreview-public-key v1\nname: x\n",
        b"usreview-private-key v1\nname: x\nkey-id: 00\nprotection: none\nsecret: AAAA\n",
        b"usreview-private-key v1\nname: x\nkey-id: 00\nprotection: rot13\nsecret: AAAA\n",
    ],
)
def test_malformed_private_files(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError):
        load_private_keys(path)


def test_mismatched_key_id_and_swapped_files(tmp_path: Path) -> None:
    write_key_pair(generate_keys("k"), tmp_path)
    pub = tmp_path / "k.pub"
    pub.write_text(pub.read_text().replace("key-id: ", "key-id: 00"))
    with pytest.raises(KeyFileError, match="does not match"):
        load_public_keys(pub)
    with pytest.raises(KeyFileError, match="private-key file"):
        load_public_keys(tmp_path / "k.key")


def test_invalid_names() -> None:
    for name in ("", ".hidden", "a/b", "x" * 65, "a b"):
        with pytest.raises(KeyFileError, match="invalid key name"):
            generate_keys(name)


def test_key_ring_states_and_file(tmp_path: Path) -> None:
    old, new, gone = generate_keys("old"), generate_keys("new"), generate_keys("gone")
    ring = KeyRing([new.public])
    ring.add(old.public, KeyState.RETIRED)
    ring.add(gone.public, KeyState.REVOKED)
    ring.save(tmp_path / "ring.json")
    ring = KeyRing.load(tmp_path / "ring.json")
    assert len(ring) == 3
    # opening: active and retired senders verify, revoked and unknown are refused
    assert ring.sender_for_opening(new.key_id).name == "new"
    assert ring.sender_for_opening(old.key_id).name == "old"
    with pytest.raises(RevokedKeyError):
        ring.sender_for_opening(gone.key_id)
    with pytest.raises(UntrustedSenderError):
        ring.sender_for_opening(generate_keys("x").key_id)
    # sealing: only active keys
    ring.check_for_sealing(new.public, "recipient")
    with pytest.raises(RetiredKeyError):
        ring.check_for_sealing(old.public, "recipient")
    with pytest.raises(RevokedKeyError):
        ring.check_for_sealing(gone.public, "sender")


def test_from_files_never_lifts_a_revocation(tmp_path: Path) -> None:
    keys = generate_keys("s")
    write_key_pair(keys, tmp_path)
    ring = KeyRing()
    ring.add(keys.public, KeyState.REVOKED)
    ring.save(tmp_path / "ring.json")
    merged = KeyRing.from_files(tmp_path / "ring.json", [tmp_path / "s.pub"])
    entry = merged.get(keys.key_id)
    assert entry is not None and entry.state is KeyState.REVOKED


def test_malformed_key_ring(tmp_path: Path) -> None:
    (tmp_path / "ring.json").write_text('{"format": "something else"}')
    with pytest.raises(KeyFileError, match="malformed key ring"):
        KeyRing.load(tmp_path / "ring.json")


def test_new_file_publishes_once(tmp_path: Path) -> None:
    target = tmp_path / "f"
    with pytest.raises(RuntimeError), new_file(target) as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        try:
            with new_file(target) as g:
                g.write(data)
        except FileExistsError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(bytes([i]) * 10,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 3 and len(target.read_bytes()) == 10
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_replacing_file_streams_a_replacement_or_leaves_the_old_file(tmp_path: Path) -> None:
    from usreview.envelope.atomic import replacing_file

    target = tmp_path / "copy.dcm"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing_file(target, mode=0o640) as f:
        f.write(b"half of the new")
        raise RuntimeError("the source went away")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["copy.dcm"]  # no temporary file left
    chunk = bytes(range(256)) * 4096  # 1 MiB
    with replacing_file(target, mode=0o640) as f:
        for _ in range(3):
            f.write(chunk)
    assert target.read_bytes() == chunk * 3
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["copy.dcm"]
