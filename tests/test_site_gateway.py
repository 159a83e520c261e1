"""The gateway's Storage SCP with a real dcmtk storescu as the scanner (no hub needed).

The hub URL points at a closed port: uploads fail and back off, so everything the
scanner sends stays in the spool where the tests can look at it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from tests.conftest import REAL_FILES, real_file
from tests.site_helpers import (
    USREVIEW,
    alive,
    copies,
    free_port,
    power_cut,
    set_port,
    sop_uid,
    start_gateway,
    storescu,
    succeeded_files,
    wait_until,
)
from usreview.envelope import generate_keys, write_key_pair
from usreview.site import Spool, init_site, load_config, read_status

pytestmark = pytest.mark.slow

if shutil.which("storescu") is None:
    pytest.fail("dcmtk's storescu is missing: apt-get install dcmtk", pytrace=False)


def _site(tmp_path: Path, allow: list[str]) -> tuple[Path, int]:
    write_key_pair(generate_keys("hub"), tmp_path / "hubkeys")
    site = init_site(
        "clinic",
        f"https://127.0.0.1:{free_port()}",  # nothing listens: the hub is down
        tmp_path / "site",
        hub_public_key=tmp_path / "hubkeys" / "hub.pub",
        allowed_calling_ae_titles=allow,
    )
    token = tmp_path / "site" / "token"
    token.write_text("not-a-real-token\n")
    token.chmod(0o600)
    port = free_port()
    set_port(site.config, port)
    return site.config, port


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    tmp_path = tmp_path_factory.mktemp("sim")
    out = []
    for kind in ("bmode", "cine", "mmode", "pw", "color"):
        result = subprocess.run(
            [*USREVIEW, "simulate", kind, "--out", str(tmp_path / "sim" / kind)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        out += [Path(line) for line in result.stdout.split()]
    return out


def _spooled(config: Path) -> dict[str, Path]:
    return {item.sop_instance_uid: item.path for item in Spool(load_config(config).spool).pending()}


# storescu proposes a compressed syntax only when told to (by default it decompresses,
# which it cannot do for most codecs) and retired SOP classes only with --required.
_PROPOSE = {
    "1.2.840.10008.1.2": [],
    "1.2.840.10008.1.2.1": [],
    "1.2.840.10008.1.2.2": ["-xb"],
    "1.2.840.10008.1.2.5": ["-xr"],
    "1.2.840.10008.1.2.4.50": ["-xy"],
    "1.2.840.10008.1.2.4.70": ["-xs"],
    "1.2.840.10008.1.2.4.80": ["-xt"],
    "1.2.840.10008.1.2.4.90": ["-xv"],
    "1.2.840.10008.1.2.4.91": ["-xw"],
}


def test_scanner_sends_simulated_and_real_studies(tmp_path: Path, simulated: list[Path]) -> None:
    config, port = _site(tmp_path, ["SCANNER"])
    groups: dict[tuple[str, ...], list[Path]] = {(): list(simulated)}
    for entry in REAL_FILES:  # all but JPEG XL, which dcmtk 3.6.7 does not know
        if entry["size"] < 3_000_000 and entry["TransferSyntaxUID"] in _PROPOSE:
            options = ("--required", *_PROPOSE[entry["TransferSyntaxUID"]])
            groups.setdefault(options, []).append(real_file(entry["file"]))
    sent = [path for paths in groups.values() for path in paths]
    assert len(sent) >= len(simulated) + 10
    gateway = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        for options, paths in groups.items():
            run = storescu(port, paths, options=options)
            assert run.returncode == 0, run.output[-3000:]
            assert len(run.succeeded) == len(paths)
        # Some real files share a SOP Instance UID (one image in two syntaxes): both are
        # kept, under their own hash; the hub will refuse the second as a conflict.
        pending = Spool(load_config(config).spool).pending()
        assert len(pending) == len(sent)
        by_uid: dict[str, list[pydicom.Dataset]] = {}
        for item in pending:
            by_uid.setdefault(item.sop_instance_uid, []).append(pydicom.dcmread(item.path))
        for path in sent:
            original = pydicom.dcmread(path)
            assert any(  # a valid Part 10 file with the dataset as sent
                stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
                and stored.PixelData == original.PixelData
                for stored in by_uid[sop_uid(path)]
            ), path
        status = read_status(load_config(config))
        assert status.gateway_running and status.spool_depth == len(sent)
    finally:
        assert gateway.stop() == 0


@pytest.mark.parametrize(
    ("sop_instance_uid", "transfer_syntax"),
    [
        ("1.2.3.4", "1.2.840.10008.1.2.1"),  # even lengths
        ("1.2.33.4", "1.2.840.10008.1.2"),  # odd: padded
        ("1." + "2" * 62, "1.2.840.10008.1.2.4.50"),  # the longest UID
    ],
)
def test_file_meta_is_the_one_pynetdicom_writes(
    sop_instance_uid: str, transfer_syntax: str
) -> None:
    from pynetdicom.dsutils import create_file_meta, encode_file_meta

    from usreview.site.scp import part10_header

    sop_class = "1.2.840.10008.5.1.4.1.1.6.1"
    meta = create_file_meta(
        sop_class_uid=sop_class, sop_instance_uid=sop_instance_uid, transfer_syntax=transfer_syntax
    )
    expected = bytes(128) + b"DICM" + encode_file_meta(meta)  # as Event.encoded_dataset()
    assert part10_header(sop_class, sop_instance_uid, transfer_syntax) == expected


def test_calling_ae_not_allowed_is_refused(tmp_path: Path, simulated: list[Path]) -> None:
    config, port = _site(tmp_path, ["SCANNER"])
    gateway = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        run = storescu(port, simulated[:1], calling="INTRUDER")
        assert run.returncode != 0 and not run.succeeded
        assert "Calling AE Title Not Recognized" in run.output, run.output[-2000:]
        echo = subprocess.run(
            ["echoscu", "-aet", "SCANNER", "-aec", "USREVIEW", "127.0.0.1", str(port)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert echo.returncode == 0  # Verification from an allowed scanner
        misdirected = subprocess.run(  # an allowed scanner calling its PACS's AE title
            ["echoscu", "-aet", "SCANNER", "-aec", "PACS", "127.0.0.1", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert misdirected.returncode != 0
        assert "Called AE Title Not Recognized" in misdirected.stderr + misdirected.stdout
        assert _spooled(config) == {}
    finally:
        gateway.stop()


def test_an_instance_with_an_invalid_uid_is_refused_as_not_understood(
    tmp_path: Path, simulated: list[Path]
) -> None:
    """Not 0xA7xx (out of resources), which scanners retry forever."""
    config, port = _site(tmp_path, ["SCANNER"])
    bad = tmp_path / "bad.dcm"
    dataset = pydicom.dcmread(simulated[0])
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = "1.2.3.abc"
        dataset.save_as(bad)
    gateway = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        run = storescu(port, [bad, simulated[0]], options=["--no-halt"])
        assert run.succeeded == [simulated[0]], run.output[-2000:]
        assert "Received Store Response (Error: CannotUnderstand)" in run.output
        assert set(_spooled(config)) == {sop_uid(simulated[0])}
    finally:
        gateway.stop()


def test_empty_allow_list_refuses_to_start(tmp_path: Path) -> None:
    config, _ = _site(tmp_path, [])
    result = subprocess.run(
        [*USREVIEW, "site", "gateway", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "gateway.allowed_calling_ae_titles" in result.stderr


def test_second_gateway_on_the_same_site_is_refused(tmp_path: Path) -> None:
    config, port = _site(tmp_path, ["*"])
    gateway = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        result = subprocess.run(
            [*USREVIEW, "site", "gateway", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1 and "another process" in result.stderr
    finally:
        gateway.stop()


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_the_upload_process_stops_with_the_gateway(tmp_path: Path, how: str) -> None:
    config, port = _site(tmp_path, ["*"])
    gateway = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        uploads = gateway.upload_process()
        assert alive(uploads)
        if how == "Ctrl-C":  # a terminal sends SIGINT to the whole process group
            os.killpg(gateway.process.pid, signal.SIGINT)
            assert gateway.process.wait(timeout=60) == 0
    finally:
        assert gateway.stop() == 0
    assert not alive(uploads)
    assert not read_status(load_config(config)).gateway_running


def test_untuned_storescu_is_not_stuck_at_20_per_second(tmp_path: Path) -> None:
    # Small instances: their cost is the round trips (where Nagle's algorithm waits for
    # the scanner's delayed ACK, about 40 ms each), not the CPU, so a busy machine still
    # tells the two apart.
    config, port = _site(tmp_path, ["*"])
    subprocess.run(
        [
            *USREVIEW,
            *("simulate", "bmode", "--out", str(tmp_path / "one")),
            *("--param", "rows=128", "--param", "columns=128", "--param", "inclusions=0"),
        ],
        capture_output=True,
        check=True,
        timeout=120,
    )
    files = copies(tmp_path / "one" / "bmode.dcm", 150, tmp_path / "many")
    gateway = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        # Five associations of 30: Nagle holds every one of them near 20/s, while a busy
        # moment of a shared machine slows only some (the best one tells).
        rates = []
        for batch in range(5):
            run = storescu(port, files[batch * 30 : (batch + 1) * 30])
            assert run.returncode == 0, run.output[-2000:]
            rates.append(30 / run.seconds)
        size = (tmp_path / "one" / "bmode.dcm").stat().st_size // 1024
        shown = ", ".join(f"{rate:.0f}" for rate in rates)
        print(f"untuned storescu -> gateway: {shown} instances/s (5 x 30 x {size} KB)")
        # Nagle + delayed ACK hold each at most near 1/40 ms = 25/s, however fast the
        # machine; with the gateway's TCP_NODELAY, the best is about 120/s on an idle machine,
        # 48/s on a loaded CI run.
        assert max(rates) > 30
        assert len(_spooled(config)) == len(files)
    finally:
        gateway.stop()


@dataclass
class _Killed:
    """A gateway killed with kill -9 while storescu sent ``files``."""

    config: Path
    port: int
    files: list[Path]
    uids: dict[Path, str]
    acknowledged: list[Path]
    spool_dir: Path
    output: str


def _kill_mid_transfer(tmp_path: Path, count: int, kill_at: int) -> _Killed:
    """storescu sends ``count`` B-modes; the gateway is killed once ``kill_at`` are spooled.

    Returns after the upload process, seeing its pipe close, has ended by itself.
    """
    config, port = _site(tmp_path, ["*"])
    subprocess.run(
        [*USREVIEW, "simulate", "bmode", "--out", str(tmp_path / "one")],
        capture_output=True,
        check=True,
        timeout=120,
    )
    files = copies(tmp_path / "one" / "bmode.dcm", count, tmp_path / "many")
    uids = {path: sop_uid(path) for path in files}
    gateway = start_gateway(config, port, tmp_path / "gateway.log")
    uploads = gateway.upload_process()
    spool_dir = load_config(config).spool
    with subprocess.Popen(
        ["storescu", "-v", "-aet", "SCANNER", "-aec", "USREVIEW", "127.0.0.1", str(port)]
        + [str(p) for p in files],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as scanner:
        wait_until(lambda: len(list(spool_dir.glob("*.dcm"))) >= kill_at, timeout=60, step=0.01)
        gateway.kill9()
        output, _ = scanner.communicate(timeout=60)
    wait_until(lambda: not alive(uploads), timeout=60)
    return _Killed(config, port, files, uids, succeeded_files(output), spool_dir, output)


def test_kill_9_during_transfers_loses_nothing_acknowledged(tmp_path: Path) -> None:
    killed = _kill_mid_transfer(tmp_path, 400, kill_at=60)
    config, files, uids, acknowledged = (
        killed.config,
        killed.files,
        killed.uids,
        killed.acknowledged,
    )
    # Killed mid-stream: some instances were acknowledged (the spool holds a few more,
    # written before their answer left), not all.
    assert 40 <= len(acknowledged) < len(files), killed.output[-2000:]
    spooled = _spooled(config)
    assert {uids[p] for p in acknowledged} <= set(spooled)
    # Restart: the spool is intact, and the scanner sends the rest (and some again).
    gateway = start_gateway(config, killed.port, tmp_path / "gateway.log")
    try:
        rest = files[len(acknowledged) - 5 :]
        run = storescu(killed.port, rest)
        assert run.returncode == 0, run.output[-2000:]
        spooled = _spooled(config)
        assert set(uids.values()) == set(spooled)
        assert len(list(killed.spool_dir.glob("*.dcm"))) == len(files)  # no duplicate
    finally:
        gateway.stop()


def test_kill_9_and_a_power_cut_the_journal_restores_what_was_acknowledged(
    tmp_path: Path,
) -> None:
    killed = _kill_mid_transfer(tmp_path, 150, kill_at=40)
    acknowledged = killed.acknowledged
    assert 20 <= len(acknowledged) < len(killed.files), killed.output[-2000:]
    # As after a power cut: the spool files not synced yet are lost or cut short.
    assert power_cut(killed.spool_dir) >= len(acknowledged) // 2
    gateway = start_gateway(killed.config, killed.port, tmp_path / "gateway.log")  # replays
    try:
        spooled = _spooled(killed.config)
        assert {killed.uids[p] for p in acknowledged} <= set(spooled)
        for path in spooled.values():
            assert hashlib.sha256(path.read_bytes()).hexdigest() in path.name
        assert "written to the spool again from its journal" in gateway.log.read_text()
    finally:
        assert gateway.stop() == 0


def test_the_gateway_accepts_only_transfer_syntaxes_the_hub_decodes(tmp_path: Path) -> None:
    """An MPEG-4 cine (no decoder here) is refused at negotiation, so the scanner keeps it
    or sends it in another syntax, instead of hearing "stored" for what the hub refuses."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_context

    from usreview.dicom.pixels import decodable_transfer_syntaxes

    usable = decodable_transfer_syntaxes(ALL_TRANSFER_SYNTAXES)
    decoded = ("1.2", "1.2.1", "1.2.4.50", "1.2.4.80", "1.2.4.90", "1.2.5")  # 1.2.840.10008.
    refused = ("1.2.1.99", "1.2.4.100", "1.2.4.102", "1.2.4.107", "1.2.4.94")  # video, JPIP...
    assert {f"1.2.840.10008.{s}" for s in decoded} <= set(usable)
    assert not {f"1.2.840.10008.{s}" for s in refused} & set(usable)

    config, port = _site(tmp_path, ["SCANNER"])
    gateway = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        multiframe = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
        scanner = AE(ae_title="SCANNER")
        scanner.requested_contexts = [
            build_context(multiframe, "1.2.840.10008.1.2.4.102"),  # MPEG-4 AVC/H.264
            build_context(multiframe, "1.2.840.10008.1.2.1"),
        ]
        assoc = scanner.associate("127.0.0.1", port, ae_title="USREVIEW")
        try:
            assert assoc.is_established
            accepted = [c.transfer_syntax[0] for c in assoc.accepted_contexts]
            rejected = [c.transfer_syntax[0] for c in assoc.rejected_contexts]
            assert accepted == ["1.2.840.10008.1.2.1"]
            assert rejected == ["1.2.840.10008.1.2.4.102"]
        finally:
            assoc.release()
    finally:
        gateway.stop()


def test_an_instance_that_would_fill_the_spools_disk_is_refused_out_of_resources(
    tmp_path: Path, simulated: list[Path]
) -> None:
    """0xA700 before the disk is full: the scanner keeps the image and sends it again."""
    from usreview.site.scp import StorageSCP

    spool = Spool(tmp_path / "spool")
    free = shutil.disk_usage(spool.root).free
    scp = StorageSCP(spool, "USREVIEW", ["SCANNER"], min_free_bytes=free + 10**15)
    port = free_port()
    scp.start("127.0.0.1", port)
    try:
        run = storescu(port, simulated[:1])
        assert not run.succeeded and "Refused: OutOfResources" in run.output, run.output[-2000:]
        assert list(spool.pending()) == []
        scp.min_free_bytes = 0  # space again: the scanner's next try is stored
        assert storescu(port, simulated[:1]).succeeded == simulated[:1]
        assert [p.sop_instance_uid for p in spool.pending()] == [sop_uid(simulated[0])]
    finally:
        scp.stop()
