"""Sixty sites upload at once to a real hub, against Orthanc receiving the same files.

A real hub (``usreview hub``: JupyterHub, its TLS proxy, the usreview service) is started
on a loopback port with its state in a temporary folder, with a sites' port
(``--site-port``, :mod:`usreview.hub.siteport`: the service serves the sites over TLS
itself, without the proxy's hop); 60 sites are enrolled on it the way ``usreview demo``
does it. ``$USREVIEW_BENCH_VIA_PROXY=1`` enrolls them on the public endpoint instead,
through the proxy. The data are generated at run time: per site a few small
simulated B-mode instances (480x640, about 308 KB), and a few sites also send one
100-frame 600x800 cine (about 48 MB). Each site's files of a round are one exam: a study
of their own, the B-mode instances in one series, the cine in another (an exam under way is
what the hub receives; Orthanc gets the same files). ``$USREVIEW_BENCH_STUDY_PER_INSTANCE=1``
puts every instance in a study and series of its own instead, the index's worst case
(a study, its first status and a series inserted per instance). Each site is one thread
(spread over a few client processes) that seals every instance to the hub (AES-256-GCM, signed
with the site's Ed25519 key), ``PUT``\\ s it and verifies the hub's signed receipt.
Afterwards each site's batch receipt (signed by the hub, verified) must list every
instance it sent exactly once, with the SHA-256 of its plaintext.

The baseline, in the same run: Orthanc (Debian package) on loopback with
``TCP_NODELAY=1``, receiving the same files from one dcmtk ``storescu`` per site (also
``TCP_NODELAY=1``), all at once; Orthanc's count of instances is checked. It starts
once the hub's automatic processing of the round is done (its time after the round's last
upload is reported): the hub's processing is background work that would otherwise take
CPU from Orthanc, or from the hub's next round.
Goal (issue 4): at least Orthanc's rate, with encryption.

The machine is shared and its speed drifts by tens of percent within minutes, so the
run is made of rounds (``$USREVIEW_BENCH_ROUNDS``, default 3): in each, new copies of
the files (new UIDs) go to the hub, then to a fresh Orthanc right after. Each side's
rate is the median over the rounds, and the ratio is the median of the rounds' own
ratios; latencies pool every round's uploads, CPU per instance every round's time.

The clock starts once every client process has started and imported what it uses (a
spawned process re-imports this module), plus a second for each site to load its keys,
so that the clients' start-up is not measured (storescu's, a few milliseconds, is). Each
site's connection, TLS handshake and the hub's first check of its token (an answer of
JupyterHub's, kept 5 s) are measured, as storescu's association is: the latency line
gives the sites' first uploads apart.

CPU per instance is reported by process for both sides (from ``/proc``: the hub's
service, parsing workers, proxy, JupyterHub and processing worker; the client
processes' own clocks; Orthanc and the storescu processes), with the cores they kept
busy on average: on a machine of two cores this shows what bounds each rate.

Scale with ``$USREVIEW_BENCH_SCALE`` (default 1: 60 sites x 8 small + 4 cines), or
``$USREVIEW_BENCH_SITES``; ``$USREVIEW_BENCH_CINES`` sets the number of cines (0: small
instances only, the per-upload costs without the cines' bulk). The service runs with its
default settings (two processes per core, see ``ServiceSettings.processes``);
``$USREVIEW_BENCH_SERVICE_PROCESSES=N`` sets the number of service processes
(``parse_workers`` then its default for N), and ``$USREVIEW_BENCH_SERVICE_THREADS=N`` the
threads of each (``ServiceSettings.threads``).
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import resource
import shutil
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from benchmarks._support import (
    HubProcess,
    copies,
    cpu_by_role,
    enroll_site,
    free_port,
    held_at_hub,
    hub_workdir,
    percentile,
    scale,
    start_orthanc,
    storescu_all,
    template,
)
from usreview.demo import DemoError
from usreview.hub.api.settings import ServiceSettings

SITES = 60
SMALL_PER_SITE = 8
CINES = 4
CLIENT_PROCESSES = 3
#: Seconds between the client processes being ready and the start (sites' own set-up).
SETUP_SECONDS = 1.0
#: Rounds, each the hub then Orthanc on new copies; medians are reported.
ROUNDS = 3
#: Orthanc's process is its whole tree (storescu is counted from its exits).
ORTHANC_ROLES = (("Orthanc", "Orthanc"),)
#: Every instance in a study of its own (see the module doc).
_STUDY_PER_INSTANCE = os.environ.get("USREVIEW_BENCH_STUDY_PER_INSTANCE", "") not in ("", "0")
#: Shared with the parent, in a client process (set by :func:`_client_init`).
_shared: dict[str, Any] = {}


@dataclass(frozen=True)
class Upload:
    site: str
    uid: str
    size: int
    seconds: float  # seal + PUT + receipt check
    put_seconds: float
    status: str
    first: bool  # the site's first upload of the round (connection, token check)


def _site_uploads(
    config: str, files: list[tuple[str, str]], start_at: float, out: list[Upload]
) -> None:
    from usreview.envelope import seal
    from usreview.ingest.receipts import verify_receipt
    from usreview.site import load_config
    from usreview.site.client import HubClient

    site = load_config(Path(config))
    keys = site.load_private_keys()
    hub_key = site.load_hub_key()
    with HubClient(site) as client:
        time.sleep(max(0.0, start_at - time.time()))
        for n, (path, uid) in enumerate(files):
            started = time.perf_counter()
            envelope = io.BytesIO()
            with open(path, "rb") as src:
                seal(src, envelope, sender=keys, recipients=[hub_key])
            size = envelope.tell()
            envelope.seek(0)
            put = time.perf_counter()
            answer = client.put_instance(uid, envelope, size)
            put_seconds = time.perf_counter() - put
            verify_receipt(answer["receipt"], hub_key, site=site.name)
            status = "duplicate" if answer.get("duplicate") else "stored"
            out.append(
                Upload(
                    site.name,
                    uid,
                    os.path.getsize(path),
                    time.perf_counter() - started,
                    put_seconds,
                    status,
                    first=n == 0,
                )
            )


def _client_init(ready: Any, start: Any) -> None:
    """Keep the parent's counter of ready processes and its start time (0 until set)."""
    _shared.update(ready=ready, start=start)


def _client_process(
    jobs: list[tuple[str, list[tuple[str, str]]]],
) -> tuple[list[Upload], float, list[str], float]:
    """Upload the given sites' files, one thread per site.

    Returns (uploads, end time, errors, CPU seconds this process used from the start).
    """
    ready, start = _shared["ready"], _shared["start"]
    with ready.get_lock():
        ready.value += 1
    while start.value == 0:
        time.sleep(0.005)
    start_at = float(start.value)
    uploads: list[Upload] = []
    errors: list[str] = []

    def run(config: str, files: list[tuple[str, str]]) -> None:
        try:
            _site_uploads(config, files, start_at, uploads)
        except Exception as exc:  # reported by the parent
            errors.append(f"{Path(config).parent.name}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, start_at - time.time()))
    cpu = time.process_time()  # the sites' own set-up is done by now
    for thread in threads:
        thread.join()
    return uploads, time.time(), errors, time.process_time() - cpu


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {role: after[role] - before.get(role, 0.0) for role in after}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_line(name: str, spent: dict[str, float], instances: int, seconds: float) -> str:
    """CPU per instance by process role, and the cores they kept busy on average."""
    total = sum(spent.values())
    parts = ", ".join(
        f"{role} {cpu / instances * 1000:.1f}"
        for role, cpu in sorted(spent.items(), key=lambda item: -item[1])
        if cpu > 0
    )
    return (
        f"  CPU per instance, {name}: {total / instances * 1000:.1f} ms ({parts}); "
        f"{total / seconds:.2f} cores busy"
    )


@dataclass
class Round:
    """One side's upload of one round's files."""

    instances: int
    megabytes: float
    seconds: float
    cpu: dict[str, float]
    uploads: list[Upload]  # the hub's only
    processed: float = 0.0  # the hub's: seconds from the last upload to every job done

    @property
    def rate(self) -> float:
        return self.instances / self.seconds


def _round_files(
    folder: Path, n_sites: int, per_site: int, small: Path, cine: Path | None, n_cines: int
) -> dict[str, list[Path]]:
    """Each site's files for one round: new copies, so new UIDs."""
    files: dict[str, list[Path]] = {}
    for i in range(n_sites):
        name = f"site-{i:02d}"
        exam = None if _STUDY_PER_INSTANCE else generate_uid()
        files[name] = copies(small, per_site, folder / name, study_uid=exam)
        if cine is not None and i < n_cines:
            files[name] += copies(cine, 1, folder / name, prefix="CINE", study_uid=exam)
    return files


def _megabytes(files: dict[str, list[Path]]) -> float:
    return sum(p.stat().st_size for paths in files.values() for p in paths) / 1e6


def _hub_round(
    hub: HubProcess, configs: dict[str, Path], files: dict[str, list[Path]], held: dict[str, int]
) -> Round:
    """All sites upload their files at once; each one is then found exactly once.

    ``held`` counts what each site had at the hub before this round (updated).
    """
    all_files = [p for paths in files.values() for p in paths]
    uids = {p: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in all_files}
    jobs = [
        (str(configs[name]), [(str(p), uids[p]) for p in paths]) for name, paths in files.items()
    ]
    groups = [jobs[i::CLIENT_PROCESSES] for i in range(CLIENT_PROCESSES)]
    context = multiprocessing.get_context("spawn")
    ready, start = context.Value("i", 0), context.Value("d", 0.0)
    with ProcessPoolExecutor(
        CLIENT_PROCESSES, mp_context=context, initializer=_client_init, initargs=(ready, start)
    ) as pool:
        futures = [pool.submit(_client_process, g) for g in groups]
        waited = time.perf_counter()
        while ready.value < len(groups) and time.perf_counter() - waited < 300:
            time.sleep(0.01)
        start_at = time.time() + SETUP_SECONDS
        start.value = start_at
        time.sleep(max(0.0, start_at - time.time()))
        cpu = cpu_by_role(hub.child.pid)
        answers = [f.result() for f in futures]
        cpu = _spent(cpu, cpu_by_role(hub.child.pid))
        cpu["sites (clients)"] = sum(a[3] for a in answers)
    uploads = [u for a in answers for u in a[0]]
    errors = [e for a in answers for e in a[2]]
    seconds = max(a[1] for a in answers) - start_at
    if errors:
        raise SystemExit(f"{len(errors)} site(s) failed, e.g. {errors[0]}")

    # Every instance stored exactly once, with the right bytes (batch receipts).
    t0 = time.perf_counter()
    missing = 0
    for name, paths in files.items():
        found = held_at_hub(configs[name])
        held[name] = held.get(name, 0) + len(paths)
        missing += abs(held[name] - len(found))
        missing += sum(found.get(uids[p]) != _sha256(p) for p in paths)
    stored = sum(u.status == "stored" for u in uploads)
    print(
        f"  verification: {stored} stored (201), {len(all_files) - missing}/{len(all_files)} "
        f"verified in batch receipts ({time.perf_counter() - t0:.1f} s)"
    )
    if missing or len(uploads) != len(all_files) or stored != len(all_files):
        raise SystemExit(f"FAILED: {missing} instance(s) missing or wrong at the hub")
    print(
        f"  usreview {len(all_files) / seconds:.0f} instances/s in {seconds:.1f} s\n"
        + _cpu_line("usreview", cpu, len(all_files), seconds),
        flush=True,
    )
    # Orthanc's round starts on a quiet machine: the hub's processing of this round
    # would otherwise take CPU from it (or from the hub's next round).
    print("  waiting for the hub's automatic processing of the round ...", flush=True)
    shown = [time.time()]

    def progress(open_jobs: int) -> None:
        if time.time() - shown[0] >= 15.0:
            shown[0] = time.time()
            print(f"    {open_jobs} processing job(s) left", flush=True)

    try:
        failed = hub.wait_processed(600.0, progress)
    except DemoError as exc:
        raise SystemExit(f"FAILED: {exc}") from None
    processed = time.time() - (start_at + seconds)
    print(
        f"  processing: every instance processed {processed:.1f} s after the last upload"
        + (f", {failed} job(s) failed" if failed else "")
    )
    return Round(len(all_files), _megabytes(files), seconds, cpu, uploads, processed)


def _orthanc_round(folder: Path, files: dict[str, list[Path]]) -> Round:
    """A fresh Orthanc receives the same files from one storescu per site, all at once."""
    all_files = [p for paths in files.values() for p in paths]
    with start_orthanc(folder, nodelay=True) as orthanc:
        batches = list(files.values())
        cpu = cpu_by_role(orthanc.child.pid, ORTHANC_ROLES)
        storescu_cpu = _children_cpu()
        seconds, stored, runs = storescu_all(
            orthanc.dicom_port, batches, called=orthanc.ae_title, nodelay=True
        )
        cpu = _spent(cpu, cpu_by_role(orthanc.child.pid, ORTHANC_ROLES))
        cpu["storescu (clients)"] = _children_cpu() - storescu_cpu
        in_orthanc = orthanc.count()
    if stored != len(all_files) or in_orthanc != len(all_files):
        bad = next((r.output[-500:] for r in runs if r.returncode), "")
        raise SystemExit(f"Orthanc stored {in_orthanc} of {len(all_files)} ({stored} acked) {bad}")
    return Round(len(all_files), _megabytes(files), seconds, cpu, [])


def _pooled_cpu(rounds: list[Round]) -> tuple[dict[str, float], int, float]:
    """CPU by role summed over ``rounds``, with their instances and seconds."""
    cpu: dict[str, float] = {}
    for r in rounds:
        for role, spent in r.cpu.items():
            cpu[role] = cpu.get(role, 0.0) + spent
    return cpu, sum(r.instances for r in rounds), sum(r.seconds for r in rounds)


def main() -> None:
    n_sites = int(os.environ.get("USREVIEW_BENCH_SITES", SITES))
    n_rounds = max(1, int(os.environ.get("USREVIEW_BENCH_ROUNDS", ROUNDS)))
    per_site = max(1, round(SMALL_PER_SITE * scale()))
    cines = os.environ.get("USREVIEW_BENCH_CINES")
    n_cines = min(n_sites, max(0, int(cines) if cines else round(CINES * scale())))
    with hub_workdir("bench-hub-sites-") as root:
        small = template("bmode", root / "data")
        cine = (
            template("cine", root / "data", frames=100, rows=600, columns=800) if n_cines else None
        )
        settings: dict[str, Any] = {}
        for name in ("processes", "threads"):
            if os.environ.get(f"USREVIEW_BENCH_SERVICE_{name.upper()}"):
                settings[name] = int(os.environ[f"USREVIEW_BENCH_SERVICE_{name.upper()}"])
        service = ServiceSettings(**settings)
        via_proxy = os.environ.get("USREVIEW_BENCH_VIA_PROXY", "") not in ("", "0")
        try:
            hub = HubProcess.start(
                root / "hub",
                free_port(),
                root / "hub.log",
                settings=settings,
                site_port=None if via_proxy else free_port(),
            )
        except DemoError as exc:  # the log goes with the temporary folder: show its end
            tail = (root / "hub.log").read_text(errors="replace").splitlines()[-40:]
            raise SystemExit("\n".join([*tail, f"the hub did not start: {exc}"])) from None
        ours: list[Round] = []
        theirs: list[Round] = []
        try:
            t0 = time.perf_counter()
            names = [f"site-{i:02d}" for i in range(n_sites)]
            configs = {
                name: enroll_site(hub.state, hub.site_url, name, root / "sites" / name, port=11112)
                for name in names
            }
            where = "the public endpoint (proxy)" if via_proxy else "the sites' port"
            print(
                f"hub up (service: {service.processes} process(es) x {service.parse_workers} "
                f"parsing worker(s), {service.threads} threads); {n_sites} sites enrolled on "
                f"{where} in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            held: dict[str, int] = {}
            for r in range(1, n_rounds + 1):
                t0 = time.perf_counter()
                folder = root / "data" / f"round-{r}"
                files = _round_files(folder, n_sites, per_site, small, cine, n_cines)
                count = sum(map(len, files.values()))
                megabytes = _megabytes(files)
                print(
                    f"round {r}/{n_rounds}: {count} instances ({n_sites * per_site} x "
                    f"{small.stat().st_size / 1e3:.0f} KB, {n_cines} x "
                    f"{cine.stat().st_size / 1e6 if cine else 0:.0f} MB cines), "
                    f"{megabytes:.0f} MB, new UIDs, generated in "
                    f"{time.perf_counter() - t0:.1f} s",
                    flush=True,
                )
                ours.append(_hub_round(hub, configs, files, held))
                theirs.append(_orthanc_round(root / f"orthanc-{r}", files))
                print(
                    f"  usreview {ours[-1].rate:.0f} instances/s in {ours[-1].seconds:.1f} s, "
                    f"Orthanc {theirs[-1].rate:.0f} in {theirs[-1].seconds:.1f} s: ratio "
                    f"{ours[-1].rate / theirs[-1].rate:.2f}",
                    flush=True,
                )
                shutil.rmtree(folder)
        finally:
            hub.stop()

    uploads = [u for r in ours for u in r.uploads]
    lat = [u.seconds * 1000 for u in uploads]
    lat_small = [u.seconds * 1000 for u in uploads if u.size < 10_000_000]
    lat_cine = [u.seconds * 1000 for u in uploads if u.size >= 10_000_000]
    rounds = f"median of {n_rounds} rounds" if n_rounds > 1 else "1 round"
    ours_rate = statistics.median(r.rate for r in ours)
    ours_mb = statistics.median(r.megabytes / r.seconds for r in ours)
    print(
        f"usreview hub, {n_sites} sites at once (seal + HTTPS PUT + signed receipt): "
        f"{ours_rate:.0f} instances/s, {ours_mb:.0f} MB/s ({rounds})"
    )
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    s50, s99 = percentile(lat_small, 50), percentile(lat_small, 99)
    print(
        f"  upload latency, every round: all p50 {p50:.0f} ms, p99 {p99:.0f} ms; "
        f"small p50 {s50:.0f} ms, p99 {s99:.0f} ms"
        + (f"; cines p50 {percentile(lat_cine, 50):.0f} ms" if lat_cine else "")
    )
    first = [u.seconds * 1000 for u in uploads if u.first]
    later = [u.seconds * 1000 for u in uploads if not u.first]
    print(
        f"  sites' first uploads (connection, TLS, token check at the hub): p50 "
        f"{percentile(first, 50):.0f} ms, p99 {percentile(first, 99):.0f} ms"
        + (
            f"; the others p50 {percentile(later, 50):.0f} ms, p99 {percentile(later, 99):.0f} ms"
            if later
            else ""
        )
    )
    print(
        "  processing (automatic, at low priority while sites upload): every instance "
        f"processed {statistics.median(r.processed for r in ours):.1f} s after a round's "
        "last upload (median)"
    )
    o_rate = statistics.median(r.rate for r in theirs)
    o_mb = statistics.median(r.megabytes / r.seconds for r in theirs)
    print(
        f"Orthanc 1.10 <- {n_sites} storescu at once, TCP_NODELAY=1 both sides (no "
        f"encryption): {o_rate:.0f} instances/s, {o_mb:.0f} MB/s ({rounds})"
    )
    print(_cpu_line("usreview", *_pooled_cpu(ours)))
    print(_cpu_line("Orthanc", *_pooled_cpu(theirs)))
    ratio = statistics.median(a.rate / b.rate for a, b in zip(ours, theirs, strict=True))
    mb_ratio = statistics.median(
        (a.megabytes / a.seconds) / (b.megabytes / b.seconds)
        for a, b in zip(ours, theirs, strict=True)
    )
    verdict = "meets" if ratio >= 1 else "misses"
    print(
        f"ratio usreview/Orthanc ({rounds}, each against the Orthanc run right after it): "
        f"{ratio:.2f}x instances/s, {mb_ratio:.2f}x MB/s ({verdict} the goal >= 1, with "
        "encryption)"
    )


if __name__ == "__main__":
    main()
