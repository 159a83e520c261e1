"""The spool encrypted at rest: files and journal records sealed with the site's spool key.

The crash test kills a writing process (kill -9) before it synced any spool file, then
deletes or truncates the spool files (a power cut's worst case), and replays the
journal with the key: every acknowledged instance comes back, byte for byte, and no
plaintext is ever on disk.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.site_helpers import power_cut, site_hub_never_asked
from usreview.site import SiteConfigError, SpoolError, SpoolKeyError
from usreview.site.atrest import MAGIC, SpoolCipher, generate_spool_key
from usreview.site.spool import JOURNAL, Spool

SEGMENT = 1 << 20
KEY = bytes(range(32))
UID = "1.2.826.0.1.3680043.8.498.7"


def payload(i: int, size: int = 30_000) -> bytes:
    """Distinct bytes that carry a recognisable plaintext marker."""
    seed = hashlib.sha256(str(i).encode()).digest()
    return b"PATIENT^SECRET" + (seed * (size // 32 + 1))[:size]


_WRITER = """
import sys
from usreview.site.atrest import SpoolCipher
from usreview.site.spool import Spool
from tests.test_site_atrest import KEY, payload
root, segment, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spool = Spool(root, SpoolCipher(KEY))
spool.open_journal(segment_size=segment, sync_delay=3600)
for i in range(count):
    spool.put(f"1.2.3.{i}", payload(i))
    print(i, flush=True)
import threading
threading.Event().wait()
"""


def _on_disk(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_files_are_sealed_and_read_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", SpoolCipher(KEY))
    data = payload(1)
    item = spool.put(UID, data)
    stored = item.path.read_bytes()
    assert stored.startswith(MAGIC) and b"PATIENT^SECRET" not in stored
    assert len(stored) == len(data) + len(MAGIC) + 8 + 12 + 16 == item.size  # 8: key id
    assert item.sha256 == hashlib.sha256(data).hexdigest()  # the name: the plaintext's
    assert spool.read(item) == data
    # Altered, renamed, or opened with another key: refused, never taken for the instance.
    altered = bytearray(stored)
    altered[100] ^= 1
    item.path.write_bytes(bytes(altered))
    with pytest.raises(SpoolError, match="does not open"):
        spool.read(item)
    item.path.write_bytes(stored)
    other = item.path.with_name(f"1.2.3_{item.sha256}.dcm")
    other.write_bytes(stored)
    with pytest.raises(SpoolError):
        spool.read_file(other, "1.2.3", item.sha256)
    with pytest.raises(SpoolError, match="does not open"):
        Spool(tmp_path / "spool", SpoolCipher(bytes(32))).read(item)
    with pytest.raises(SpoolError, match=r"folders\.spool_key"):
        Spool(tmp_path / "spool").read(item)
    # A plaintext file from before the key is still read, checked against its name.
    plain = Spool(tmp_path / "spool").put("1.2.9", payload(2))
    assert spool.read(plain) == payload(2)


def test_kill_9_and_a_power_cut_replay_the_sealed_journal(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root), str(16 * SEGMENT), "500"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    ) as proc:
        assert proc.stdout is not None
        acknowledged = [int(proc.stdout.readline()) for _ in range(120)]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        acknowledged += [int(line) for line in proc.stdout.read().split()]
    cipher = SpoolCipher(KEY)
    assert b"PATIENT^SECRET" not in _on_disk(root)  # neither the files nor the journal
    damaged = power_cut(root, cipher=cipher)
    assert damaged >= 60
    with pytest.raises(SpoolError, match=r"folders\.spool_key"):
        Spool(root).open_journal(segment_size=16 * SEGMENT)
    spool = Spool(root, cipher)
    spool.remove_leftovers()
    recovery = spool.open_journal(segment_size=16 * SEGMENT)
    try:
        assert recovery.records >= len(acknowledged) and recovery.restored >= damaged
        held = {item.sop_instance_uid: item for item in spool.pending()}
        for i in acknowledged:
            assert spool.read(held[f"1.2.3.{i}"]) == payload(i)
    finally:
        spool.close_journal()
    assert b"PATIENT^SECRET" not in _on_disk(root)
    assert not list((root / JOURNAL).glob("*.wal"))


def test_the_key_file(tmp_path: Path) -> None:
    from usreview.site.atrest import load_spool_cipher
    from usreview.site.config import load_config

    key = tmp_path / "keys" / "spool.key"
    generate_spool_key(key)
    assert key.stat().st_mode & 0o777 == 0o600 and len(bytes.fromhex(key.read_text())) == 32
    with pytest.raises(SiteConfigError):
        generate_spool_key(key)  # never overwritten
    config = tmp_path / "site.toml"
    config.write_text(
        '[site]\nname = "clinic"\n[hub]\nurl = "https://hub.example.org"\n'
        '[folders]\nspool_key = "keys/spool.key"\n'
    )
    site = load_config(config)
    cipher = load_spool_cipher(site)
    assert cipher is not None
    sealed = cipher.seal(UID, "ab" * 32, b"x")
    assert SpoolCipher(bytes.fromhex(key.read_text())).open(UID, "ab" * 32, sealed) == b"x"
    key.chmod(0o644)
    with pytest.raises(SiteConfigError) as refused:
        load_spool_cipher(site)
    assert refused.value.setting == "folders.spool_key" and "chmod 600" in str(refused.value)
    key.chmod(0o600)
    key.write_text("short\n")
    with pytest.raises(SiteConfigError, match="64 hex digits"):
        load_spool_cipher(site)
    key.unlink()
    with pytest.raises(SiteConfigError, match="does not exist"):
        load_spool_cipher(site)


@pytest.mark.slow
def test_a_gateway_with_a_spool_key_keeps_no_plaintext(tmp_path: Path) -> None:
    import pydicom

    from tests.site_helpers import copies, offline_site, sop_uid, start_gateway, storescu
    from usreview.site import load_config
    from usreview.site.atrest import load_spool_cipher

    config, port = offline_site(tmp_path, "--encrypt-spool")
    site = load_config(config)
    cipher = load_spool_cipher(site)
    assert cipher is not None and site.spool_key is not None
    assert site.spool_key.stat().st_mode & 0o077 == 0
    simulated = tmp_path / "sim"
    done = subprocess.run(
        [sys.executable, "-m", "usreview.cli", "simulate", "bmode", "--out", str(simulated)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    files = copies(Path(done.stdout.split()[0]), 20, tmp_path / "study")
    name = str(pydicom.dcmread(files[0]).PatientName).encode()
    gateway = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        run = storescu(port, files)
        assert run.returncode == 0 and len(run.succeeded) == len(files), run.output[-2000:]
        spool = Spool(site.spool, cipher)
        items = {item.sop_instance_uid: item for item in spool.pending()}
        assert set(items) == {sop_uid(p) for p in files}
        on_disk = _on_disk(site.spool)
        assert name not in on_disk and b"DICM" not in on_disk  # files and journal sealed
        for path in files:  # what the upload process reads: the dataset as sent
            sent = pydicom.dcmread(path)
            data = spool.read(items[sop_uid(path)])
            assert data is not None
            assert pydicom.dcmread(io.BytesIO(data)).PixelData == sent.PixelData
    finally:
        assert gateway.stop() == 0


def test_without_its_key_the_uploader_keeps_the_sealed_instances(tmp_path: Path) -> None:
    """A missing spool key is the configuration's fault: nothing is moved to rejected/."""
    import time

    from usreview.site import load_config, read_status
    from usreview.site.status import StatusBook
    from usreview.site.uploader import Uploader

    config = load_config(site_hub_never_asked(tmp_path))  # no folders.spool_key
    config.state.mkdir(mode=0o700)  # as the gateway makes it
    sealed = Spool(config.spool, SpoolCipher(KEY))
    for i in range(3):
        sealed.put(f"1.2.3.{i}", payload(i))
    uploader = Uploader(config, Spool(config.spool), StatusBook(config.state), workers=1)
    uploader.start()
    try:
        deadline = time.monotonic() + 10
        while not read_status(config).recorded.get("errors") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        uploader.stop()
    errors = [e["message"] for e in read_status(config).recorded["errors"]]
    assert errors and all("set folders.spool_key" in e for e in errors), errors
    assert len(Spool(config.spool).pending()) == 3
    assert not list((config.spool / "rejected").glob("*.dcm"))


# -- a changed spool key, and its rotation -----------------------------------------------
#
# A record whose framing and CRC are intact but that is sealed with a key the site no
# longer lists is not a torn write: replay refuses (naming the segment and the key id)
# and discards nothing; with the old key listed in folders.retired_spool_keys it replays.

OLD = bytes(range(32))
NEW = bytes(range(100, 132))
SEGMENT_SIZE = 1 << 20


def _crashed_with_lost_files(tmp_path: Path, cipher: SpoolCipher, count: int = 3) -> Path:
    """A spool whose gateway acknowledged ``count`` instances, then lost power.

    The journal is copied while the gateway runs (as a crash leaves it); none of the
    spool files, never synced (sync_delay of an hour), is in the copy.
    """
    live = Spool(tmp_path / "live", cipher)
    live.open_journal(segment_size=SEGMENT_SIZE, sync_delay=3600)
    try:
        for i in range(count):
            live.put(f"1.2.3.{i}", payload(i))
        crashed = tmp_path / "crashed"
        (crashed / JOURNAL).mkdir(parents=True)
        for path in (live.root / JOURNAL).glob("*.wal"):
            shutil.copyfile(path, crashed / JOURNAL / path.name)
    finally:
        live.close_journal()
    return crashed


def _wal(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / JOURNAL).glob("*.wal"))}


def _legacy_seal(key: bytes, uid: str, data: bytes) -> bytes:
    """An instance sealed as before key ids (b"USRSPL1\\0", nonce, AES-256-GCM)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    sha = hashlib.sha256(data).hexdigest()
    nonce = bytes(12)
    aad = b"USRSPL1\0" + f"{uid}_{sha}".encode()
    return b"USRSPL1\0" + nonce + AESGCM(key).encrypt(nonce, data, aad)


def test_a_new_spool_key_refuses_the_journal_and_loses_nothing(tmp_path: Path) -> None:
    crashed = _crashed_with_lost_files(tmp_path, SpoolCipher(OLD))
    before = _wal(crashed)
    assert len(before) == 1 and not list(crashed.glob("*.dcm"))  # the power cut's worst
    for _ in range(2):  # refused every time, until the key is listed
        with pytest.raises(SpoolKeyError) as refused:
            Spool(crashed, SpoolCipher(NEW)).open_journal(segment_size=SEGMENT_SIZE)
        from usreview.site.atrest import spool_key_id
        from usreview.site.journal import JournalKeyError

        assert isinstance(refused.value, JournalKeyError)
        message = str(refused.value)
        assert refused.value.key_id == spool_key_id(OLD) and spool_key_id(OLD) in message
        assert str(crashed / JOURNAL / next(iter(before))) in message
        assert "folders.retired_spool_keys" in message and "nothing was discarded" in message
        assert _wal(crashed) == before  # kept as it was: not recycled, not cut
        assert not list(crashed.glob("*.dcm"))
    # The old key listed as retired: every acknowledged instance comes back, sealed
    # again with the new key.
    spool = Spool(crashed, SpoolCipher(NEW, [OLD]))
    recovery = spool.open_journal(segment_size=SEGMENT_SIZE)
    spool.close_journal()
    assert (recovery.records, recovery.restored, recovery.torn) == (3, 3, 0)
    held = {item.sop_instance_uid: item for item in Spool(crashed).pending()}
    assert sorted(held) == [f"1.2.3.{i}" for i in range(3)]
    for i in range(3):
        stored = held[f"1.2.3.{i}"].path.read_bytes()
        assert SpoolCipher.sealed_key_id(stored) == spool_key_id(NEW)
        assert Spool(crashed, SpoolCipher(NEW)).read(held[f"1.2.3.{i}"]) == payload(i)
    assert not _wal(crashed)


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_a_torn_sealed_tail_is_still_discarded(tmp_path: Path, damage: str) -> None:
    """Torn: cut short, or a block of its data never written (its key is configured)."""
    crashed = _crashed_with_lost_files(tmp_path, SpoolCipher(OLD), count=5)
    (segment,) = (crashed / JOURNAL).glob("*.wal")
    last = 4 * -(-(58 + len("1.2.3.0") + 30_014 + 8 + 8 + 12 + 16) // 4096) * 4096
    assert segment.read_bytes()[last : last + 4] == b"USJ1"
    with segment.open("r+b") as f:
        if damage == "truncated":
            f.truncate(last + 1000)
        else:  # the record's third block still holds zeros
            f.seek(last + 8192)
            f.write(bytes(4096))
    for cipher in (SpoolCipher(OLD), SpoolCipher(NEW, [OLD])):  # current or retired
        replay = tmp_path / f"replay-{cipher.key_id}"
        shutil.copytree(crashed, replay)
        spool = Spool(replay, cipher)
        recovery = spool.open_journal(segment_size=SEGMENT_SIZE)
        spool.close_journal()
        assert (recovery.records, recovery.restored, recovery.torn) == (4, 4, 1)
        held = {item.sop_instance_uid: item for item in spool.pending()}
        assert sorted(held) == [f"1.2.3.{i}" for i in range(4)]
        assert all(spool.read(held[f"1.2.3.{i}"]) == payload(i) for i in range(4))


def test_records_sealed_before_key_ids_still_replay(tmp_path: Path) -> None:
    """The legacy format (no key id): every configured key is tried, current first."""
    from usreview.site.journal import Journal

    def legacy_journal(root: Path, count: int) -> None:
        """A journal as the last version wrote it, copied as a crash leaves it."""
        live = root.with_name(root.name + "-live")
        journal = Journal(live, lambda names: None, segment_size=SEGMENT_SIZE, sync_delay=3600)
        journal.recover(lambda record: False)
        journal.start()
        try:
            for i in range(count):
                data = payload(i)
                sha = hashlib.sha256(data).hexdigest()
                journal.append(f"1.2.3.{i}", sha, _legacy_seal(OLD, f"1.2.3.{i}", data))
            (root / JOURNAL).mkdir(parents=True)
            for path in live.glob("*.wal"):
                shutil.copyfile(path, root / JOURNAL / path.name)
        finally:
            journal.close()

    root = tmp_path / "spool"
    legacy_journal(root, 2)
    before = _wal(root)
    with pytest.raises(SpoolKeyError, match="sealed before spool key ids"):
        Spool(root, SpoolCipher(NEW)).open_journal(segment_size=SEGMENT_SIZE)
    assert _wal(root) == before
    spool = Spool(root, SpoolCipher(NEW, [OLD]))
    recovery = spool.open_journal(segment_size=SEGMENT_SIZE)
    spool.close_journal()
    assert (recovery.records, recovery.restored, recovery.torn) == (2, 2, 0)
    assert sorted(spool.read(item) for item in spool.pending()) == sorted(
        payload(i) for i in range(2)
    )
    # Torn after a record that opened (same segment, same key): discarded as before.
    # Torn as the segment's first record: a wrong key cannot be told apart, refused.
    for count, outcome in ((2, (1, 1)), (1, None)):
        root = tmp_path / f"torn{count}"
        legacy_journal(root, count)
        (segment,) = (root / JOURNAL).glob("*.wal")
        last = (count - 1) * 8 * 4096
        with segment.open("r+b") as f:
            f.seek(last + 8192)
            f.write(bytes(4096))
        spool = Spool(root, SpoolCipher(OLD))
        if outcome is None:
            with pytest.raises(SpoolKeyError, match="sealed before spool key ids"):
                spool.open_journal(segment_size=SEGMENT_SIZE)
            assert (root / JOURNAL / segment.name).exists()
            continue
        recovery = spool.open_journal(segment_size=SEGMENT_SIZE)
        spool.close_journal()
        assert (recovery.records, recovery.torn) == outcome


def test_spool_files_sealed_with_a_retired_key_are_read(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    old = Spool(root, SpoolCipher(OLD)).put(UID, payload(1))
    legacy = root / f"1.2.3.9_{hashlib.sha256(payload(9)).hexdigest()}.dcm"
    legacy.write_bytes(_legacy_seal(OLD, "1.2.3.9", payload(9)))
    (legacy_item,) = [i for i in Spool(root).pending() if i.sop_instance_uid == "1.2.3.9"]
    # Opened by no configured key: the configuration's fault (kept), never "damaged".
    only_new = Spool(root, SpoolCipher(NEW))
    for item in (old, legacy_item):
        with pytest.raises(SpoolKeyError, match=r"folders\.retired_spool_keys"):
            only_new.read(item)
    from usreview.site.atrest import spool_key_id

    with pytest.raises(SpoolKeyError, match=spool_key_id(OLD)):
        only_new.read(old)
    rotated = Spool(root, SpoolCipher(NEW, [OLD]))
    assert rotated.read(old) == payload(1) and rotated.read(legacy_item) == payload(9)
    new = rotated.put("1.2.3.5", payload(5))  # sealed with the current key
    assert SpoolCipher.sealed_key_id(new.path.read_bytes()) == spool_key_id(NEW)
    # Sealed with a configured key and altered: damaged (SpoolError, not SpoolKeyError).
    stored = bytearray(old.path.read_bytes())
    stored[-1] ^= 1
    old.path.write_bytes(bytes(stored))
    with pytest.raises(SpoolError, match="altered") as damaged:
        rotated.read(old)
    assert not isinstance(damaged.value, SpoolKeyError)


def test_retired_spool_keys_in_site_toml_and_rotation(tmp_path: Path) -> None:
    from usreview.site import init_site
    from usreview.site.atrest import load_spool_cipher, spool_key_id
    from usreview.site.config import load_config, rotate_spool_key

    init_site("clinic", "https://hub.example.org", tmp_path / "site", encrypt_spool=True)
    config = load_config(tmp_path / "site" / "site.toml")
    assert config.retired_spool_keys == ()
    first = load_spool_cipher(config)
    assert first is not None
    spool = Spool(config.spool, first)
    before = spool.put(UID, payload(1))
    key_file = rotate_spool_key(config, "20260101T000000Z")
    assert key_file.stat().st_mode & 0o777 == 0o600
    rotated = load_config(config.path)
    assert rotated.spool_key == key_file.resolve()
    assert rotated.retired_spool_keys == (config.spool_key,)
    assert 'retired_spool_keys = ["keys/spool.key"]' in config.path.read_text()
    cipher = load_spool_cipher(rotated)
    assert cipher is not None
    assert cipher.key_ids == (spool_key_id(bytes.fromhex(key_file.read_text())), first.key_id)
    assert Spool(config.spool, cipher).read(before) == payload(1)
    after = Spool(config.spool, cipher).put("1.2.3.5", payload(5))
    assert SpoolCipher.sealed_key_id(after.path.read_bytes()) == cipher.key_id != first.key_id
    # A second rotation keeps both earlier keys, newest first; a bad one is named.
    rotate_spool_key(rotated, "20270101T000000Z")
    again = load_config(config.path)
    assert again.retired_spool_keys == (key_file.resolve(), config.spool_key)
    again.retired_spool_keys[1].chmod(0o644)
    with pytest.raises(SiteConfigError) as exposed:
        load_spool_cipher(again)
    assert exposed.value.setting == "folders.retired_spool_keys[1]"


def test_the_uploader_keeps_files_sealed_with_a_key_no_longer_listed(tmp_path: Path) -> None:
    """A changed spool key is the configuration's fault: nothing is moved to rejected/."""
    import time

    from usreview.site import load_config, read_status
    from usreview.site.atrest import load_spool_cipher
    from usreview.site.status import StatusBook
    from usreview.site.uploader import Uploader

    config = load_config(site_hub_never_asked(tmp_path, encrypt_spool=True))
    config.state.mkdir(mode=0o700)
    sealed = Spool(config.spool, SpoolCipher(OLD))  # the key before a careless change
    for i in range(3):
        sealed.put(f"1.2.3.{i}", payload(i))
    uploader = Uploader(
        config, Spool(config.spool, load_spool_cipher(config)), StatusBook(config.state), workers=1
    )
    uploader.start()
    try:
        deadline = time.monotonic() + 30
        while len(uploader._waiting) < 3 and time.monotonic() < deadline:  # each held back
            time.sleep(0.05)
    finally:
        uploader.stop()
    assert not list((config.spool / "rejected").glob("*.dcm"))
    assert len(Spool(config.spool).pending()) == 3
    from usreview.site.atrest import spool_key_id

    recorded = read_status(config).recorded["errors"]
    errors = [e["message"] for e in recorded]
    assert errors and all(spool_key_id(OLD) in e for e in errors), errors
    assert all("folders.retired_spool_keys" in (e.get("advice") or "") for e in recorded)
    # Each is held back on its own: the uploads of the others never paused for them.
    assert uploader._resume_at == 0.0
    assert len(uploader._waiting) == 3
