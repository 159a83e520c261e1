"""The spool encrypted at rest: files and journal records sealed with the site's spool key.

The crash test kills a writing process (kill -9) before it synced any spool file, then
deletes or truncates the spool files (a power cut's worst case), and replays the
journal with the key: every acknowledged instance comes back, byte for byte, and no
plaintext is ever on disk.
"""

from __future__ import annotations

import hashlib
import io
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.site_helpers import power_cut
from usreview.site import SiteConfigError, SpoolError
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
    assert len(stored) == len(data) + len(MAGIC) + 12 + 16 == item.size
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

    from usreview.envelope import generate_keys, write_key_pair
    from usreview.site import init_site, load_config, read_status
    from usreview.site.status import StatusBook
    from usreview.site.uploader import Uploader

    write_key_pair(generate_keys("hub"), tmp_path / "hubkeys")
    site = init_site(
        "clinic",
        "http://127.0.0.1:9",
        tmp_path / "site",
        hub_public_key=tmp_path / "hubkeys" / "hub.pub",
    )
    (tmp_path / "site" / "token").write_text("unused\n")
    (tmp_path / "site" / "token").chmod(0o600)
    config = load_config(site.config)  # no folders.spool_key
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
