"""Real peers for the site's tests: a gateway process, dcmtk's storescu, copies of studies."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.uid import generate_uid

from usreview.demo import free_port

if TYPE_CHECKING:
    from usreview.site.atrest import SpoolCipher

USREVIEW = [sys.executable, "-m", "usreview.cli"]


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None, log: Path | None) -> None:
    deadline = time.monotonic() + 30
    while True:
        if process is not None and process.poll() is not None:
            raise AssertionError(log.read_text()[-3000:] if log else "process ended")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {port}") from None
            time.sleep(0.1)


def copies(
    source: Path,
    count: int,
    folder: Path,
    *,
    study_uid: str | None = None,
    accession: str | None = None,
) -> list[Path]:
    """``count`` copies of ``source`` with new SOP Instance UIDs (one study)."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID = study_uid or generate_uid()
    if accession is not None:
        ds.AccessionNumber = accession
    ds.SeriesInstanceUID = generate_uid()
    out = []
    for i in range(count):
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@dataclass
class StoreRun:
    returncode: int
    succeeded: list[Path]
    output: str
    seconds: float


def storescu(
    port: int,
    paths: Sequence[Path],
    *,
    called: str = "USREVIEW",
    calling: str = "SCANNER",
    options: Sequence[str] = (),
    timeout: float = 120,
) -> StoreRun:
    """dcmtk's storescu with default network settings (as an untuned scanner)."""
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    started = time.monotonic()
    proc = subprocess.run(
        ["storescu", "-v", *options, "-aet", calling, "-aec", called, "127.0.0.1", str(port)]
        + [str(p) for p in paths],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    seconds = time.monotonic() - started
    output = proc.stdout + proc.stderr
    return StoreRun(proc.returncode, succeeded_files(output), output, seconds)


def succeeded_files(output: str) -> list[Path]:
    current: Path | None = None
    done = []
    for line in output.splitlines():
        match = re.match(r"I: Sending file: (.*)$", line)
        if match:
            current = Path(match.group(1))
        elif "Received Store Response (Success)" in line and current is not None:
            done.append(current)
            current = None
    return done


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def children(pid: int) -> set[int]:
    """The process ids of ``pid``'s children (Linux ``/proc``)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.update(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return {child for child in found if alive(child)}


def command_line(pid: int) -> bytes:
    """The command line of process ``pid`` (NUL-separated; empty once it has ended)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def upload_process(self, *, other_than: int | None = None, timeout: float = 30.0) -> int:
        """The pid of the gateway's upload process (a new one: not ``other_than``)."""
        deadline = time.monotonic() + timeout
        while True:
            found = children(self.process.pid) - {other_than}
            if len(found) == 1:
                return found.pop()
            if time.monotonic() > deadline:
                raise AssertionError(f"the gateway has no single upload process: {found}")
            time.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()
        return int(self.process.returncode)


def start_gateway(config: Path, port: int, log: Path) -> GatewayProcess:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*USREVIEW, "site", "gateway", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_for_port(port, process, log)
    return GatewayProcess(process, port, log)


def offline_site(folder: Path, *extra: str) -> tuple[Path, int]:
    """``usreview site init`` with ``extra`` options, the hub down; (site.toml, DICOM port).

    The hub URL points at a closed port: what the scanner sends stays in the spool.
    """
    from usreview.envelope import generate_keys, write_key_pair

    write_key_pair(generate_keys("hub"), folder / "hubkeys")
    port = free_port()
    args = [*USREVIEW, "site", "init", "clinic", "--dir", str(folder / "site")]
    args += ["--hub", f"https://127.0.0.1:{free_port()}", "--allow-ae", "SCANNER"]
    args += ["--hub-key", str(folder / "hubkeys" / "hub.pub"), "--port", str(port), *extra]
    subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    token = folder / "site" / "token"
    token.write_text("not-a-real-token\n")
    token.chmod(0o600)
    return folder / "site" / "site.toml", port


def site_hub_never_asked(folder: Path, **init: Any) -> Path:
    """``init_site`` in ``folder/site`` (keyword options ``init``) for a hub that is never
    asked (a closed port), with a token file; its site.toml."""
    from usreview.envelope import generate_keys, write_key_pair
    from usreview.site import init_site

    write_key_pair(generate_keys("hub"), folder / "hubkeys")
    site = init_site(
        "clinic",
        "http://127.0.0.1:9",
        folder / "site",
        hub_public_key=folder / "hubkeys" / "hub.pub",
        **init,
    )
    (folder / "site" / "token").write_text("unused\n")
    (folder / "site" / "token").chmod(0o600)
    return site.config


def set_port(config: Path, port: int) -> None:
    text = config.read_text()
    config.write_text(re.sub(r"(?m)^port = 11112$", f"port = {port}", text, count=1))


def wait_until(predicate: object, timeout: float = 30.0, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(step)


def journaled(root: Path, cipher: SpoolCipher | None = None) -> list[Path]:
    """The spool files the journal holds a record of (the others were written directly)."""
    from usreview.site.journal import _read_segment
    from usreview.site.spool import JOURNAL

    names = set()
    for path in sorted((root / JOURNAL).glob("*.wal")):
        for record in _read_segment(path, int(path.stem, 16), cipher):
            if record is not None:
                names.add(f"{record.sop_instance_uid}_{record.sha256}.dcm")
    return sorted(root / name for name in names if (root / name).exists())


def power_cut(root: Path, *, worst: bool = False, cipher: SpoolCipher | None = None) -> int:
    """Damage the spool files not synced yet (delete or cut short); return how many.

    A power cut's worst case for a spool written through its journal: a file whose
    record is still in the journal may never have reached the disk.

    ``worst``: every one is lost; else every other one is lost, the rest cut short.
    """
    files = journaled(root, cipher)
    for n, path in enumerate(files):
        if worst or n % 2:
            path.unlink()
        else:
            with path.open("r+b") as f:
                f.truncate(path.stat().st_size // 2)
    return len(files)
