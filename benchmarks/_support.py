"""What the system benchmarks share: data, Orthanc, storescu, a plain SCP, chromium, figures.

The hub, sites and gateways are started with :mod:`usreview.demo`'s helpers (the same
code ``usreview demo`` runs); this module adds the peers we compare against. The tests
import from here (chromium for the browser tests, :mod:`benchmarks._worklist` for the
worklist ones); nothing here imports the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from usreview.demo import (
    Child,
    HubProcess,
    c_store,
    enroll_site,
    free_port,
    held_at_hub,
    start_gateway,
    wait_for_port,
)
from usreview.simulate import simulate

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "Child",
    "HubProcess",
    "Orthanc",
    "StorescuRun",
    "c_store",
    "copies",
    "cpu_by_role",
    "enroll_site",
    "finish",
    "free_port",
    "held_at_hub",
    "hub_workdir",
    "launched_chromium",
    "percentile",
    "plain_scp",
    "scale",
    "start_gateway",
    "start_orthanc",
    "storescu",
    "storescu_all",
    "template",
]


@contextmanager
def hub_workdir(prefix: str, parent: str | None = "/var/tmp") -> Iterator[Path]:
    """A temporary folder for a benchmark's hub, removed afterwards.

    Mode 0711: a hub run as root starts each person's server under an account of its own
    (:mod:`usreview.hub.spawner`), which must pass this folder to reach its home in the
    state below it (and the hub refuses to start otherwise); nothing in it is listed.
    """
    with tempfile.TemporaryDirectory(prefix=prefix, dir=parent) as folder:
        os.chmod(folder, 0o711)
        yield Path(folder)


def scale(default: float = 1.0) -> float:
    """``$USREVIEW_BENCH_SCALE`` (multiplies the benchmarks' counts), default 1."""
    return float(os.environ.get("USREVIEW_BENCH_SCALE", default))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated."""
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1])


# -- data ---------------------------------------------------------------------------------


def template(kind: str, folder: Path, **params: Any) -> Path:
    """One simulated instance of ``kind`` (seed 7) to copy."""
    return simulate(kind, folder / f"template-{kind}", seed=7, **params)[0]


def copies(
    source: Path, count: int, folder: Path, prefix: str = "IM", *, study_uid: str | None = None
) -> list[Path]:
    """``count`` copies of ``source``, each with a new SOP Instance UID.

    Each copy is in a study and series of its own; with ``study_uid``, every copy is in that
    study, in one new series (the images of one exam).
    """
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(source)
    series = generate_uid()
    out = []
    for i in range(count):
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.StudyInstanceUID = study_uid or generate_uid()
        ds.SeriesInstanceUID = series if study_uid else generate_uid()
        path = folder / f"{prefix}{i:05d}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


# -- dcmtk storescu -----------------------------------------------------------------------


@dataclass
class StorescuRun:
    returncode: int
    succeeded: int
    seconds: float
    output: str


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    called: str,
    calling: str = "SCANNER",
    nodelay: bool,
) -> subprocess.Popen[str]:
    """Start dcmtk's ``storescu`` sending ``files`` over one association.

    ``nodelay`` sets ``TCP_NODELAY=1`` in its environment (dcmtk then disables Nagle);
    without it, storescu runs with default settings, as an untuned scanner. Use
    :func:`finish` to wait for it.
    """
    if shutil.which("storescu") is None:
        raise SystemExit("storescu is missing: apt-get install dcmtk (make test does)")
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return subprocess.Popen(
        ["storescu", "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port)]
        + [str(p) for p in files],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen[str], started: float, timeout: float = 600) -> StorescuRun:
    """Wait for a :func:`storescu` process; count its successful C-STOREs."""
    output, _ = process.communicate(timeout=timeout)
    seconds = time.perf_counter() - started
    succeeded = output.count("Received Store Response (Success)")
    return StorescuRun(process.returncode, succeeded, seconds, output)


def storescu_all(
    port: int, batches: Sequence[Sequence[Path]], *, called: str, nodelay: bool
) -> tuple[float, int, list[StorescuRun]]:
    """One storescu per batch, all at once; (wall seconds, instances stored, runs)."""
    started = time.perf_counter()
    processes = [storescu(port, b, called=called, nodelay=nodelay) for b in batches if b]
    runs = [finish(p, started) for p in processes]
    seconds = time.perf_counter() - started
    return seconds, sum(r.succeeded for r in runs), runs


# -- CPU by process -----------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Roles of the hub's processes, from their command lines (first match wins).
HUB_ROLES = (
    ("usreview.hub.service", "service"),
    ("configurable-http-proxy", "proxy"),
    ("usreview.processing.worker", "processing"),
    ("usreview.cli hub", "JupyterHub"),
)


def _processes() -> dict[int, tuple[int, float, str]]:
    """Every process: pid -> (parent pid, CPU seconds so far, command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # it ended meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime + stime
        found[int(entry.name)] = (int(fields[1]), cpu, cmdline)
    return found


def cpu_by_role(root: int, roles: Sequence[tuple[str, str]] = HUB_ROLES) -> dict[str, float]:
    """CPU seconds used so far by ``root`` and its descendants, summed by role.

    A process whose command line contains a role's marker has that role, and so have its
    own children unless they match another (the service's parsing workers count as
    ``parse workers``, the processing worker's pool as ``processing``); the rest is
    ``other``. Take it before and after a run: the difference is what the run cost.
    Processes that ended in between are missing from the second reading.
    """
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    totals: dict[str, float] = {}

    def visit(pid: int, inherited: str) -> None:
        _, cpu, cmdline = table[pid]
        role = next((name for marker, name in roles if marker in cmdline), None)
        if role is None:
            role = "parse workers" if inherited == "service" else inherited
        totals[role] = totals.get(role, 0.0) + cpu
        for child in children.get(pid, []):
            visit(child, role)

    if root in table:
        visit(root, "other")
    return totals


# -- chromium -----------------------------------------------------------------------------

CHROMIUM = os.environ.get("USREVIEW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)


@contextmanager
def launched_chromium() -> Iterator[Any]:
    """A Playwright ``Browser`` on headless Debian chromium; closed on exit.

    Chromium is ``/usr/bin/chromium`` (``$USREVIEW_CHROMIUM`` to override), driven by
    Playwright without ``playwright install``.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=list(CHROMIUM_ARGS), headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


# -- Orthanc ------------------------------------------------------------------------------


@dataclass
class Orthanc:
    child: Child
    dicom_port: int
    http: str
    ae_title: str = "ORTHANC"

    def count(self) -> int:
        """Instances Orthanc holds (its REST ``/statistics``)."""
        with urllib.request.urlopen(self.http + "/statistics", timeout=30) as answer:
            return int(json.loads(answer.read())["CountInstances"])

    def instances(self) -> list[dict[str, str]]:
        """The simplified tags of every instance Orthanc holds (its REST API)."""
        with urllib.request.urlopen(self.http + "/instances", timeout=10) as answer:
            ids = json.loads(answer.read())
        found = []
        for orthanc_id in ids:
            url = f"{self.http}/instances/{orthanc_id}/simplified-tags"
            with urllib.request.urlopen(url, timeout=10) as answer:
                found.append(json.loads(answer.read()))
        return found


@contextmanager
def start_orthanc(
    root: Path, *, nodelay: bool, settings: dict[str, Any] | None = None
) -> Iterator[Orthanc]:
    """Orthanc (Debian package) on free loopback ports with its storage in ``root``.

    ``nodelay``: ``TCP_NODELAY=1`` in its environment (as in BASELINES.md); ``settings``
    are added to its configuration (a PACS in the tests checks the called AE title).
    """
    binary = shutil.which("Orthanc")
    if binary is None:
        raise SystemExit("Orthanc is missing: apt-get install orthanc (make test does)")
    root.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "StorageCompression": False,
        **(settings or {}),
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    command = [binary, str(root / "orthanc.json")]
    child = Child("Orthanc", command, root / "orthanc.log", env=env)
    try:
        wait_for_port(http_port, child)
        wait_for_port(dicom_port, child)
        yield Orthanc(child, dicom_port, f"http://127.0.0.1:{http_port}")
    finally:
        child.stop()


# -- a plain pynetdicom Storage SCP -------------------------------------------------------


@contextmanager
def plain_scp(folder: Path) -> Iterator[int]:
    """pynetdicom's Storage SCP writing each dataset's raw bytes to ``folder``; its port.

    The baseline of BASELINES.md ("pynetdicom SCP writing raw dataset bytes"): no
    spool, no fsync, default socket options.
    """
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    folder.mkdir(parents=True, exist_ok=True)
    counter = iter(range(1 << 30))
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:
        with lock:
            n = next(counter)
        raw: Any = event.request.DataSet  # type: ignore[union-attr]  # a C-STORE request
        with open(folder / f"{n:06d}.raw", "wb") as f:
            f.write(raw.getvalue())
        return 0x0000

    ae = AE(ae_title="PLAIN")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None
    try:
        yield port
    finally:
        server.shutdown()
