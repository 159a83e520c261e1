"""Results during the exam: from a scanner's C-STORE at the gateway to a result in the outbox.

A real hub and one site's gateway (``usreview site gateway``) run on loopback, started
as ``usreview demo`` starts them (the site on the hub's sites' port). A "scanner"
(pynetdicom SCU, one association) sends single-frame PW Doppler instances (about 308 KB)
one every 0.5 s. For each we time, from the start of its C-STORE: the gateway's C-STORE
response (spooled durably), the instance stored at the hub (seen in the archive: the hub
has signed its receipt by then), and its automatic result (the pipeline's measurements,
sealed to the site) delivered into the site's outbox folder. p50 and p95.

The first automatic result timed is published by a small loop in this benchmark that
watches the archive, opens each new instance with the hub's key, runs ``run_pipeline``
and calls ``publish_result`` (its measurements, as JSON): the transport's share. The
hub's own processing worker (:mod:`usreview.processing.worker`) processes the same
instances beside it, at its lower priority, and publishes their SR, summary and derived
images: its summary's arrival in the outbox is timed too, the latency a site sees.
Published from another process, a result reaches the waiting site within the service's
``results_poll_seconds`` (0.5 s by default), which bounds the last step from below.

Then the gateway's ingest rate from dcmtk ``storescu`` with default settings (an untuned
scanner: no ``TCP_NODELAY``), with its uploads to the hub running (in the gateway's
upload process), in the same run as the same files sent to pynetdicom's plain Storage
SCP writing raw bytes and to Orthanc (Debian package, default settings). Goal (issue 5):
at least 100 instances/s. Then the same files from four storescu at once (four scanners),
to the gateway and to the plain SCP: there the associations share the spool journal's
fdatasyncs (group commit).

Then the spool encrypted at rest (``folders.spool_key``: files and journal records
sealed with AES-256-GCM): a second site's gateway with a sealed spool takes the same
burst from one untuned storescu, uploads running, against the first (plaintext) one's
rate in the same run.

Last, the spool's write itself, in this process, interleaved in blocks: ``Spool.put`` of
one 308 KB instance written directly (temporary file, fsync, rename, folder fsync),
through the write-ahead journal (the gateway's way: the file unsynced, a journal record,
one fdatasync), and through the journal sealed with a spool key, alone and beside
another process writing durably to the same disk (as the hub's store does in this
benchmark).

Scale with ``$USREVIEW_BENCH_SCALE`` (default 1: 20 paced instances, 200 for the rate).
``$USREVIEW_BENCH_SITE_PARTS`` (comma-separated, default all) picks the parts: ``latency``,
``ingest`` (one untuned storescu: gateway against the plain SCP), ``orthanc``, ``scanners``,
``sealed``, ``writes``; e.g. ``USREVIEW_BENCH_SITE_PARTS=ingest`` measures the ingest rate
alone. ``$USREVIEW_BENCH_SITE_ROUNDS`` (default 1) repeats the ingest part, gateway and
plain SCP alternating, each round with new UIDs (per round and median).
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path

from benchmarks._support import (
    HubProcess,
    c_store,
    copies,
    enroll_site,
    finish,
    free_port,
    held_at_hub,
    hub_workdir,
    percentile,
    plain_scp,
    scale,
    start_gateway,
    start_orthanc,
    storescu,
    template,
)
from usreview.demo import SCANNER_AE, measure_stored, publish_measurements

PACED = 20
PACE_SECONDS = 0.5
RATE_N = 200
SITE = "clinic"
SCANNERS = 4
PARTS = ("latency", "ingest", "orthanc", "scanners", "sealed", "writes")
WARM_UP = 5


def _parts() -> set[str]:
    """The parts picked by ``$USREVIEW_BENCH_SITE_PARTS`` (all by default)."""
    raw = os.environ.get("USREVIEW_BENCH_SITE_PARTS", "").strip()
    picked = {part.strip() for part in raw.split(",") if part.strip()} if raw else set(PARTS)
    unknown = picked - set(PARTS)
    if unknown:
        raise SystemExit(
            f"USREVIEW_BENCH_SITE_PARTS: unknown part(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(PARTS)}"
        )
    return picked


def _rounds() -> int:
    raw = os.environ.get("USREVIEW_BENCH_SITE_ROUNDS", "1")
    try:
        rounds = int(raw)
    except ValueError:
        rounds = 0
    if rounds < 1:
        raise SystemExit(f"USREVIEW_BENCH_SITE_ROUNDS must be a whole number >= 1, not {raw!r}")
    return rounds


class AutoResults:
    """Watch the hub's archive; measure and publish each new instance of ``site``."""

    def __init__(self, hub: HubProcess, site: str) -> None:
        self.hub = hub
        self.site = site
        self.archived: dict[str, float] = {}
        self.published: dict[str, float] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        from usreview.store import Archive

        state = self.hub.state
        with Archive.open(None, state.root / "archive") as archive:
            while not self._stop.is_set():
                for record in archive.list_instances(self.site):
                    uid = record.sop_instance_uid
                    if uid in self.archived:
                        continue
                    self.archived[uid] = time.monotonic()
                    try:
                        summary = measure_stored(state, archive, self.site, uid)
                        publish_measurements(state, archive, summary)
                    except Exception as exc:  # reported by main()
                        self.errors.append(f"{uid}: {exc}")
                    self.published[uid] = time.monotonic()
                self._stop.wait(0.02)


class OutboxWatch:
    """Note when each instance's JSON result named like ``pattern`` appears in the outbox."""

    def __init__(self, outbox: Path, pattern: str) -> None:
        self.outbox = outbox
        self.pattern = pattern
        self.arrived: dict[str, float] = {}
        self._seen: set[Path] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for path in self.outbox.glob(self.pattern):
                if path not in self._seen:
                    now = time.monotonic()
                    self._seen.add(path)
                    self.arrived[json.loads(path.read_text())["sop_instance_uid"]] = now
            self._stop.wait(0.01)


def _line(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"  {name:<44} p50 {percentile(ms, 50):6.0f} ms   p95 {percentile(ms, 95):6.0f} ms"


def main() -> None:
    parts = _parts()
    paced = max(3, round(PACED * scale())) + 1
    rate_n = max(20, round(RATE_N * scale()))
    with hub_workdir("bench-site-latency-") as root:
        exam = copies(template("pw", root / "data"), paced, root / "exam")
        burst = copies(template("bmode", root / "data"), rate_n, root / "burst")
        hub = HubProcess.start(root / "hub", free_port(), root / "hub.log", site_port=free_port())
        try:
            port = free_port()
            config = enroll_site(hub.state, hub.site_url, SITE, root / "site", port=port)
            gateway = start_gateway(config, root / "gateway.log")
            plain_rate: float | None = None
            try:
                if "latency" in parts:
                    _latency(hub, config, port, exam)
                if parts & {"ingest", "orthanc"}:
                    plain_rate = _ingest(config, port, burst, root, parts)
                if "scanners" in parts:
                    _scanners(config, port, burst, root)
            finally:
                gateway.stop()
            if "sealed" in parts:
                _sealed_ingest(hub, burst, root, plain_rate)
        finally:
            hub.stop()
        if "writes" in parts:
            _spool_writes(burst[0], root / "writes")


def _latency(hub: HubProcess, config: Path, port: int, exam: list[Path]) -> None:
    from usreview.site import load_config

    auto = AutoResults(hub, SITE)
    outbox = load_config(config).outbox
    watch = OutboxWatch(outbox, "*/*-measurements.json")  # this benchmark's loop
    processed = OutboxWatch(outbox, "*/*-summary.json")  # the hub's processing worker
    auto.start()
    watch.start()
    processed.start()
    sent: dict[str, float] = {}
    acked: dict[str, float] = {}

    def on_stored(path: Path, uid: str, started: float) -> None:
        sent[uid] = started
        acked[uid] = time.monotonic()

    try:
        # Warm-up (imports, first connections): one instance, not counted.
        warm = c_store(exam[:1], port)
        deadline = time.monotonic() + 60
        while len(watch.arrived) < 1 and time.monotonic() < deadline and not warm.failed:
            time.sleep(0.05)
        outcome = c_store(exam[1:], port, pace=PACE_SECONDS, on_stored=on_stored)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            len(watch.arrived) < len(exam) or len(processed.arrived) < len(exam)
        ):
            time.sleep(0.05)
    finally:
        auto.stop()
        watch.stop()
        processed.stop()
    if outcome.failed or auto.errors or min(len(watch.arrived), len(processed.arrived)) < len(exam):
        raise SystemExit(
            f"FAILED: {len(outcome.failed)} C-STORE failure(s), {len(auto.errors)} processing "
            f"error(s) {auto.errors[:1]}, {len(watch.arrived)}/{len(exam)} results and "
            f"{len(processed.arrived)}/{len(exam)} of the hub's worker in the outbox"
        )
    uids = list(sent)
    print(
        f"{len(uids)} single-frame PW instances (after one for warm-up), one every "
        f"{PACE_SECONDS} s: scanner -> gateway -> hub -> automatic result -> outbox"
    )
    print(_line("C-STORE response (spooled at the gateway)", [acked[u] - sent[u] for u in uids]))
    print(_line("stored at the hub (receipt signed)", [auto.archived[u] - sent[u] for u in uids]))
    print(_line("result published at the hub", [auto.published[u] - sent[u] for u in uids]))
    print(_line("result in the site's outbox", [watch.arrived[u] - sent[u] for u in uids]))
    print(
        _line(
            "the hub worker's summary in the outbox", [processed.arrived[u] - sent[u] for u in uids]
        ),
        flush=True,
    )
    print(
        "  (the first result is published by this benchmark's loop watching the archive, the "
        "transport's share; the last by the hub's processing worker, what a site waits for)",
        flush=True,
    )


def _ingest(
    config: Path, port: int, burst: list[Path], root: Path, parts: set[str]
) -> float | None:
    """The gateway's rate from one untuned storescu, against the plain SCP and Orthanc.

    Returns the gateway's median rate (None when the ``ingest`` part is not picked).
    """
    n = len(burst)
    print(f"ingest from dcmtk storescu with default settings (untuned scanner), {n} x 308 KB:")
    gateway_rate: float | None = None
    plain_rate: float | None = None
    if "ingest" in parts:
        # Warm-up (imports, first connections, the upload process): not counted.
        warm = copies(burst[0], WARM_UP, root / "warm-up")
        finish(storescu(port, warm, called="USREVIEW", calling=SCANNER_AE, nodelay=False), 0.0)
        rounds = _rounds()
        gateway_rates: list[float] = []
        plain_rates: list[float] = []
        for i in range(rounds):
            files = burst if i == 0 else copies(burst[0], n, root / f"burst-{i}")
            gateway_rates.append(_gateway_burst(config, port, files))
            with plain_scp(root / f"plain-{i}") as plain_port:
                started = time.perf_counter()
                plain = finish(storescu(plain_port, files, called="PLAIN", nodelay=False), started)
            plain_rates.append(plain.succeeded / plain.seconds)
            print(
                f"  pynetdicom plain SCP writing raw bytes:                   "
                f"{plain_rates[-1]:.0f} instances/s"
            )
            if rounds > 1:
                print(
                    f"  round {i + 1}/{rounds}: gateway {gateway_rates[-1]:.0f}, plain SCP "
                    f"{plain_rates[-1]:.0f} instances/s, ratio "
                    f"{gateway_rates[-1] / plain_rates[-1]:.2f}x"
                )
        gateway_rate = statistics.median(gateway_rates)
        plain_rate = statistics.median(plain_rates)
        if rounds > 1:
            print(
                f"  median of {rounds} rounds: gateway {gateway_rate:.0f}, plain SCP "
                f"{plain_rate:.0f} instances/s"
            )

    orthanc_rate: float | None = None
    if "orthanc" in parts:
        with start_orthanc(root / "orthanc", nodelay=False) as orthanc:
            started = time.perf_counter()
            ortho = finish(
                storescu(orthanc.dicom_port, burst, called=orthanc.ae_title, nodelay=False),
                started,
            )
            held_orthanc = orthanc.count()
        orthanc_rate = ortho.succeeded / ortho.seconds
        print(
            f"  Orthanc 1.10, default settings:                           {orthanc_rate:.0f} "
            f"instances/s ({held_orthanc} stored)"
        )
    if gateway_rate is not None and plain_rate is not None:
        verdict = "meets" if gateway_rate >= 100 else "misses"
        against_orthanc = (
            f", gateway/Orthanc {gateway_rate / orthanc_rate:.2f}x" if orthanc_rate else ""
        )
        print(
            f"ratios: gateway/pynetdicom plain SCP {gateway_rate / plain_rate:.2f}x"
            f"{against_orthanc}; {verdict} the goal >= 100 instances/s with upload running"
        )
    return gateway_rate


def _gateway_burst(config: Path, port: int, files: list[Path]) -> float:
    """``files`` from one untuned storescu to the gateway; its rate, all checked at the hub."""
    from usreview.site import Spool, load_config

    n = len(files)
    started = time.perf_counter()
    run = finish(
        storescu(port, files, called="USREVIEW", calling=SCANNER_AE, nodelay=False), started
    )
    if run.succeeded != n:
        raise SystemExit(f"FAILED: gateway stored {run.succeeded}/{n}: {run.output[-500:]}")
    rate = n / run.seconds
    spool = Spool(load_config(config).spool)
    deadline = time.monotonic() + 300
    while spool.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    at_hub = time.perf_counter() - started
    held = held_at_hub(config)
    missing = sum(1 for p in files if not _held(p, held))
    print(
        f"  usreview gateway (spool journal, TCP_NODELAY, uploads running): "
        f"{rate:.0f} instances/s; all {n - missing}/{n} at the hub after {at_hub:.1f} s "
        f"({n / at_hub:.0f} instances/s end to end)"
    )
    if missing:
        raise SystemExit(f"FAILED: {missing} instance(s) not at the hub")
    return rate


def _sealed_ingest(
    hub: HubProcess, burst: list[Path], root: Path, plain_rate: float | None
) -> None:
    """A gateway whose spool is encrypted at rest takes the burst (new UIDs)."""
    from usreview.site import Spool, load_config
    from usreview.site.atrest import generate_spool_key, load_spool_cipher

    port = free_port()
    config = enroll_site(hub.state, hub.site_url, f"{SITE}-sealed", root / "sealed", port=port)
    generate_spool_key(root / "sealed" / "keys" / "spool.key")
    text = config.read_text()
    config.write_text(text.replace('spool_key = ""', 'spool_key = "keys/spool.key"'))
    site = load_config(config)
    assert load_spool_cipher(site) is not None
    files = copies(burst[0], len(burst), root / "sealed-burst")
    n = len(files)
    gateway = start_gateway(config, root / "sealed-gateway.log")
    try:
        started = time.perf_counter()
        run = finish(
            storescu(port, files, called="USREVIEW", calling=SCANNER_AE, nodelay=False), started
        )
        if run.succeeded != n:
            raise SystemExit(f"FAILED: sealed gateway stored {run.succeeded}/{n}")
        rate = n / run.seconds
        spool = Spool(site.spool)
        deadline = time.monotonic() + 300
        while spool.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        at_hub = time.perf_counter() - started
        held = held_at_hub(config)
    finally:
        gateway.stop()
    missing = sum(1 for p in files if not _held(p, held))
    against = (
        f" ({rate / plain_rate:.2f}x the plaintext spool's {plain_rate:.0f})" if plain_rate else ""
    )
    print(
        f"spool encrypted at rest (AES-256-GCM), one untuned storescu, {n} x 308 KB, uploads "
        f"running: {rate:.0f} instances/s{against}; all {n - missing}/{n} at the hub after "
        f"{at_hub:.1f} s"
    )
    if missing:
        raise SystemExit(f"FAILED: {missing} sealed instance(s) not at the hub")


def _scanners(config: Path, port: int, burst: list[Path], root: Path) -> None:
    from usreview.site import Spool, load_config

    n = len(burst)
    again = copies(burst[0], n, root / "scanners")  # new UIDs: not at the hub yet
    batches = [again[i::SCANNERS] for i in range(SCANNERS)]
    print(f"{SCANNERS} storescu at once (default settings), {n} x 308 KB in all:")
    seconds, stored = _at_once(port, batches, "USREVIEW")
    if stored != n:
        raise SystemExit(f"FAILED: gateway stored {stored}/{n} from {SCANNERS} scanners")
    gateway_rate = n / seconds
    with plain_scp(root / "plain-scanners") as plain_port:
        seconds, plain_stored = _at_once(plain_port, batches, "PLAIN")
    plain_rate = plain_stored / seconds
    spool = Spool(load_config(config).spool)
    deadline = time.monotonic() + 120
    while spool.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    print(
        f"  usreview gateway (uploads running): {gateway_rate:.0f} instances/s; "
        f"pynetdicom plain SCP: {plain_rate:.0f} instances/s; "
        f"ratio {gateway_rate / plain_rate:.2f}x"
    )


_LOAD = """
import os, sys
from usreview.envelope.atomic import replace_file
data = os.urandom(1 << 20)
for i in range(1_000_000):
    replace_file(os.path.join(sys.argv[1], f"{i % 16}.bin"), data)
"""


def _spool_writes(instance: Path, root: Path) -> None:
    """``Spool.put`` directly and through the journal, interleaved: p50, mean, ratio."""
    import os
    import secrets
    import subprocess
    import sys

    from usreview.site import Spool
    from usreview.site.atrest import SpoolCipher

    data = instance.read_bytes()
    blocks, per_block = max(2, round(8 * scale())), 25
    print(
        f"spool write of one {len(data) / 1e3:.0f} KB instance, {blocks} interleaved blocks "
        f"of {per_block} each way (journal/direct and sealed/journal: mean time ratios):"
    )
    direct = Spool(root / "direct")
    journaled = Spool(root / "journaled")
    journaled.open_journal()
    sealed = Spool(root / "sealed", SpoolCipher(secrets.token_bytes(32)))
    sealed.open_journal()
    n = 0
    try:
        for label, loaded in (("alone", False), ("beside a durable writer", True)):
            load = None
            if loaded:
                (root / "load").mkdir(exist_ok=True)
                env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
                load = subprocess.Popen([sys.executable, "-c", _LOAD, str(root / "load")], env=env)
                time.sleep(0.5)
            times: dict[str, list[float]] = {"direct": [], "journal": [], "sealed": []}
            try:
                for block in range(blocks):
                    order = [("direct", direct), ("journal", journaled), ("sealed", sealed)]
                    for way, spool in order if block % 2 else order[::-1]:
                        for _ in range(per_block):
                            n += 1
                            started = time.perf_counter()
                            spool.put(f"1.2.826.0.1.3680043.99.{n}", data)
                            times[way].append(time.perf_counter() - started)
            finally:
                if load is not None:
                    load.kill()
                    load.wait()
            means = {way: sum(values) / len(values) for way, values in times.items()}
            print(
                f"  {label:<24} direct p50 {percentile(times['direct'], 50) * 1e3:5.2f} ms "
                f"mean {means['direct'] * 1e3:5.2f} ms; journal p50 "
                f"{percentile(times['journal'], 50) * 1e3:5.2f} ms mean "
                f"{means['journal'] * 1e3:5.2f} ms; ratio {means['journal'] / means['direct']:.2f}x"
            )
            print(
                f"  {'':<24} journal sealed p50 {percentile(times['sealed'], 50) * 1e3:5.2f} ms "
                f"mean {means['sealed'] * 1e3:5.2f} ms; "
                f"ratio {means['sealed'] / means['journal']:.2f}x the plaintext journal"
            )
    finally:
        journaled.close_journal()
        sealed.close_journal()


def _at_once(port: int, batches: list[list[Path]], called: str) -> tuple[float, int]:
    """One untuned storescu per batch, all at once: (wall seconds, instances stored)."""
    started = time.perf_counter()
    processes = [
        storescu(port, batch, called=called, calling=SCANNER_AE, nodelay=False) for batch in batches
    ]
    runs = [finish(process, started) for process in processes]
    return time.perf_counter() - started, sum(run.succeeded for run in runs)


def _held(path: Path, held: dict[str, str]) -> bool:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) in held


if __name__ == "__main__":
    main()
