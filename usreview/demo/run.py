"""``usreview demo``'s run: the steps of :mod:`usreview.demo`, their progress and summary."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from usreview.demo.parts import (
    DEFAULT_HUB_PORT,
    RESULT_KIND,
    REVIEWER,
    SITES,
    USREVIEW,
    Child,
    DemoError,
    DemoSite,
    HubProcess,
    c_store,
    enroll_site,
    free_port,
    held_at_hub,
    in_outbox,
    port_free,
    set_toml_value,
    wait_for_port,
)
from usreview.errors import UsreviewError

__all__ = ["run_demo"]

#: Quantity name -> key of the simulator's truth.json holding its true value.
_TRUTH_KEYS = {
    "peak_systolic_velocity": "psv_cm_s",
    "end_diastolic_velocity": "edv_cm_s",
    "resistive_index": "ri",
    "pulsatility_index": "pi",
    "velocity_time_integral": "vti_cm",
    "heart_rate": "heart_rate_bpm",
    "peak_velocity": "psv_cm_s",
    "lv_internal_dimension_diastole": "lvidd_mm",
    "lv_internal_dimension_systole": "lvids_mm",
    "fractional_shortening": "fractional_shortening",
    "volume": "volume_ml",
}
_SHOWN = {  # quantities printed in the summary, per kind, with short labels
    "pw": (("peak_systolic_velocity", "PSV"), ("end_diastolic_velocity", "EDV"),
           ("resistive_index", "RI"), ("pulsatility_index", "PI")),
    "cw": (("peak_velocity", "peak velocity"), ("velocity_time_integral", "VTI")),
    "mmode": (("lv_internal_dimension_diastole", "LVIDd"), ("fractional_shortening", "FS")),
    "volume": (("volume", "volume"),),
}  # fmt: skip


def _say(message: str) -> None:
    sys.stderr.write(f"demo: {message}\n")
    sys.stderr.flush()


#: How the summary names each kind of result, one and several.
_KIND_NAMES = {
    "summary": ("measurement summary", "measurement summaries"),
    "sr": ("SR", "SRs"),
    "derived-image": ("processed image", "processed images"),
}


def _kinds_text(counts: Mapping[str, int]) -> str:
    """``{"sr": 1, "derived-image": 3}`` as "1 SR, 3 processed images"."""
    order = [*_KIND_NAMES, *sorted(set(counts) - set(_KIND_NAMES))]
    parts = []
    for kind in (k for k in order if counts.get(k)):
        one, many = _KIND_NAMES.get(kind, (kind, kind))
        parts.append(f"{counts[kind]} {one if counts[kind] == 1 else many}")
    return ", ".join(parts) or "none"


def _kinds(site: _SiteRun) -> str:
    return _kinds_text(Counter(site.published[i] for i in site.received))


@dataclass
class _SiteRun:
    site: DemoSite
    folder: Path
    files: list[Path] = field(default_factory=list)
    truth: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> truth.json
    kind_of: dict[str, str] = field(default_factory=dict)  # uid -> simulated kind
    config: Path | None = None
    gateway: Child | None = None
    sent: list[str] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    results: dict[str, int] = field(default_factory=dict)  # uid -> result id
    delivered: dict[str, str] = field(default_factory=dict)  # uid -> outbox path
    published: dict[int, str] = field(default_factory=dict)  # every result id -> its kind
    received: dict[int, str] = field(default_factory=dict)  # every result id -> outbox path
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)


class _Demo:
    def __init__(self, out: Path, port: int | None, timeout: float) -> None:
        self.out = out.resolve()
        self.requested_port = port
        self.timeout = timeout
        self.logs = self.out / "logs"
        self.run_file = self.out / "run.json"
        self.hub: HubProcess | None = None
        self.sites = [_SiteRun(s, self.out / "sites" / s.name) for s in SITES]
        self.password: str | None = None
        self.started = time.monotonic()
        self._ports: set[int] = set()  # handed out to listeners that start later

    # -- bookkeeping of children, so that a killed demo's are stopped by the next run

    def _record_pid(self, child: Child) -> None:
        saved = json.loads(self.run_file.read_text()) if self.run_file.exists() else {}
        saved["children"] = [*saved.get("children", []), child.pid]
        self.run_file.write_text(json.dumps(saved))

    def _children(self) -> list[Child]:
        found = [s.gateway for s in self.sites if s.gateway is not None]
        return found + ([self.hub.child] if self.hub is not None else [])

    def _stop_leftovers(self) -> None:
        if not self.run_file.exists():
            return
        try:
            pids = [int(p) for p in json.loads(self.run_file.read_text()).get("children", [])]
        except (ValueError, TypeError, AttributeError):
            return
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(self.out).encode() not in cmdline or b"usreview" not in cmdline:
                continue  # not ours any more (the pid was reused)
            _say(f"stopping process {pid} left by an earlier demo on {self.out}")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        saved = json.loads(self.run_file.read_text())
        saved["children"] = []
        self.run_file.write_text(json.dumps(saved))

    def stop(self) -> None:
        for site in self.sites:
            if site.gateway is not None:
                site.gateway.stop()
        if self.hub is not None:
            self.hub.stop()
        if self.run_file.exists():
            with contextlib.suppress(OSError, ValueError):
                saved = json.loads(self.run_file.read_text())
                saved["children"] = []
                self.run_file.write_text(json.dumps(saved))

    # -- steps

    def simulate(self) -> None:
        from usreview.simulate import KINDS, simulate

        made = 0
        for site in self.sites:
            for kind in site.site.kinds:
                folder = self.out / "studies" / site.site.name / kind
                paths = sorted(folder.glob("*.dcm"))
                if not paths:
                    paths = simulate(kind, folder, seed=KINDS.index(kind))
                    made += len(paths)
                for path in paths:
                    truth = json.loads(path.with_name(path.stem + ".truth.json").read_text())
                    uid = str(truth["sop_instance_uid"])
                    site.truth[uid] = truth
                    site.kind_of[uid] = kind
                    site.files.append(path)
        total = sum(len(s.files) for s in self.sites)
        reused = "" if made == total else f" ({total - made} from an earlier run)"
        _say(f"simulated {total} instances under {self.out / 'studies'}{reused}")

    def _hub_port(self) -> int:
        if self.requested_port is not None:
            if not port_free(self.requested_port):
                raise DemoError(f"port {self.requested_port} is in use: choose another --port")
            return self.requested_port
        saved = json.loads(self.run_file.read_text()) if self.run_file.exists() else {}
        for port in (saved.get("hub_port"), DEFAULT_HUB_PORT):
            if isinstance(port, int) and port_free(port):
                self._ports.add(port)
                return port
        return free_port(besides=self._ports)

    def start_hub(self) -> None:
        state_dir = self.out / "hub"
        fresh = not (state_dir / "hub.key").exists()
        if fresh:  # a new hub knows none of the old sites: enroll them again
            for site in self.sites:
                if (site.folder / "site.toml").exists():
                    _say(f"{site.folder} belongs to an earlier hub; enrolling it again")
                    _remove_site_folder(site.folder)
        port = self._hub_port()
        _say(f"starting the hub on https://127.0.0.1:{port} (state {state_dir}) ...")
        self.hub = HubProcess.start(
            state_dir,
            port,
            self.logs / "hub.log",
            on_spawn=self._record_pid,
            site_port=free_port(besides=self._ports),  # the clinics' own port
        )
        saved = json.loads(self.run_file.read_text())
        saved["hub_port"] = port
        self.run_file.write_text(json.dumps(saved))
        _say(f"hub ready in {time.monotonic() - self.started:.1f} s")

    def add_reviewer(self) -> None:
        from usreview.hub.accounts import Accounts
        from usreview.hub.commands import add_user

        assert self.hub is not None
        if Accounts(self.hub.state.accounts).is_person(REVIEWER):
            _say(f"reviewer {REVIEWER!r} exists (its password was printed when it was created)")
            return
        person = add_user(self.hub.state.root, REVIEWER, "reviewer")
        self.password = person.password
        _say(f"added reviewer {REVIEWER!r}")

    def enroll(self) -> None:
        from usreview.hub.accounts import Accounts

        assert self.hub is not None
        accounts = Accounts(self.hub.state.accounts)
        registered = set(accounts.groups().get("sites", []))
        for site in self.sites:
            config = site.folder / "site.toml"
            complete = all(
                (site.folder / name).exists() for name in ("site.toml", "token", "hub.pub")
            )
            name = site.site.name
            if complete and name in registered:
                set_toml_value(config, "hub", "url", json.dumps(self.hub.site_url))
                port = free_port(besides=self._ports)
                set_toml_value(config, "gateway", "port", str(port))
                site.config = config
                _say(f"site {name}: reusing {site.folder}")
                continue
            if name in registered:
                raise DemoError(
                    f"site {name} is registered at the hub but {site.folder} is incomplete; "
                    f"remove {self.out / 'hub'} and {self.out / 'sites'} to start over"
                )
            if site.folder.exists():
                _remove_site_folder(site.folder)
            site.config = enroll_site(
                self.hub.state,
                self.hub.site_url,
                name,
                site.folder,
                port=free_port(besides=self._ports),
            )
            _say(f"site {name}: enrolled in {site.folder} (site init, hub add-site)")

    def start_gateways(self) -> None:
        from usreview.site import load_config

        for site in self.sites:
            assert site.config is not None
            command = [*USREVIEW, "site", "gateway", "--config", str(site.config)]
            log = self.logs / f"{site.site.name}-gateway.log"
            site.gateway = Child(f"the gateway of {site.site.name}", command, log)
            self._record_pid(site.gateway)
        for site in self.sites:
            assert site.config is not None and site.gateway is not None
            port = load_config(site.config).port
            wait_for_port(port, site.gateway)
            _say(f"gateway {site.site.name} listening on 127.0.0.1:{port} (AE USREVIEW)")

    def send(self) -> None:
        from usreview.site import load_config

        for site in self.sites:
            assert site.config is not None
            port = load_config(site.config).port
            outcome = c_store(site.files, port)
            if outcome.failed:
                uid, why = next(iter(outcome.failed.items()))
                raise DemoError(
                    f"site {site.site.name}: the gateway refused {len(outcome.failed)} "
                    f"instance(s), e.g. {uid}: {why} (log: {self.logs})"
                )
            site.sent = outcome.stored
            mb = sum(p.stat().st_size for p in site.files) / 1e6
            _say(
                f"scanner -> {site.site.name}: C-STORE of {len(site.sent)} instance(s) "
                f"({mb:.1f} MB) succeeded"
            )

    def wait_for_receipts(self) -> None:
        deadline = time.monotonic() + self.timeout
        for site in self.sites:
            assert site.config is not None
            last = "no answer yet"
            while True:
                try:
                    held = held_at_hub(site.config)
                    site.acknowledged = [uid for uid in site.sent if uid in held]
                    if len(site.acknowledged) == len(site.sent):
                        break
                    last = f"{len(site.acknowledged)} of {len(site.sent)} acknowledged"
                except UsreviewError as exc:
                    last = str(exc)
                self._check_children()
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"site {site.site.name}: the hub's receipt does not name every "
                        f"instance sent after {self.timeout:.0f} s ({last}; see "
                        f"usreview site status --config {site.config})"
                    )
                time.sleep(0.2)
            _say(
                f"hub receipt (signed, verified) for {site.site.name}: "
                f"{len(site.acknowledged)}/{len(site.sent)} instance(s) stored"
            )

    def wait_for_processing(self) -> None:
        """Wait until the hub's automatic worker has processed every stored instance."""
        from usreview.store import Archive

        assert self.hub is not None
        failed = self.hub.wait_processed(self.timeout, lambda _: self._check_children())
        with Archive.open(None, self.hub.state.root / "archive") as archive:
            for site in self.sites:
                name = site.site.name
                for record in archive.results.results_since(name, 0, limit=1000):
                    site.published[int(record.cursor)] = record.kind
                    if record.kind == RESULT_KIND:
                        site.results[str(record.cursor)] = int(record.cursor)
        note = f"; {failed} job(s) failed (usreview hub jobs --failed)" if failed else ""
        _say(f"the hub's worker processed every stored instance automatically{note}")

    def wait_for_outboxes(self) -> None:
        from usreview.site import load_config

        deadline = time.monotonic() + self.timeout
        for site in self.sites:
            assert site.config is not None
            outbox = load_config(site.config).outbox
            while True:
                for result_id, kind in site.published.items():
                    if result_id in site.received:
                        continue
                    found = in_outbox(outbox, result_id, kind)
                    if found is None:
                        continue
                    site.received[result_id] = str(found)
                    if kind == RESULT_KIND:  # the measurements, for the summary
                        summary = json.loads(found.read_text())
                        uid = str(summary.get("sop_instance_uid", result_id))
                        site.delivered[uid] = str(found)
                        site.summaries[uid] = summary
                        site.results[uid] = result_id
                        site.results.pop(str(result_id), None)
                if len(site.received) == len(site.published):
                    break
                self._check_children()
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"site {site.site.name}: {len(site.received)} of "
                        f"{len(site.published)} result(s) in {outbox} after "
                        f"{self.timeout:.0f} s (log: {site.gateway and site.gateway.log})"
                    )
                time.sleep(0.1)
            _say(
                f"{site.site.name}: {len(site.received)} result(s) in its outbox {outbox} "
                f"({_kinds(site)})"
            )

    def _check_children(self) -> None:
        for child in self._children():
            if not child.alive():
                raise DemoError(f"{child.name} stopped: {child.last_line()} (log: {child.log})")

    # -- the summary

    def summary(self) -> dict[str, Any]:
        assert self.hub is not None
        sites = []
        measurements = []
        for site in self.sites:
            assert site.config is not None
            sites.append(
                {
                    "name": site.site.name,
                    "folder": str(site.folder),
                    "config": str(site.config),
                    "kinds": list(site.site.kinds),
                    "instances_sent": len(site.sent),
                    "acknowledged": len(site.acknowledged),
                    "results_published": len(site.results),
                    "results_received": len(site.delivered),
                    "outbox": sorted(site.delivered.values()),
                    "outbox_files": dict(Counter(site.published[i] for i in site.received)),
                }
            )
            for uid, summary in site.summaries.items():
                quantities = {
                    q["name"]: {"value": q["value"], "unit": q["unit"]}
                    for q in summary["quantities"]
                }
                truth = _truth_values(site.truth.get(uid, {}), quantities)
                measurements.append(
                    {
                        "site": site.site.name,
                        "kind": site.kind_of.get(uid, "?"),
                        "sop_instance_uid": uid,
                        "result_id": site.results.get(uid),
                        "quantities": quantities,
                        "truth": truth,
                        "recommendations": [r["text"] for r in summary["recommendations"]],
                    }
                )
        return {
            "hub": {
                "url": self.hub.url,
                "login": f"{self.hub.url}/hub/login",
                "sites_url": self.hub.site_url,
                "state": str(self.hub.state.root),
                "certificate": str(self.hub.state.tls_cert),
                "reviewer": REVIEWER,
            },
            "sites": sites,
            "measurements": measurements,
            "logs": str(self.logs),
            "seconds_to_summary": round(time.monotonic() - self.started, 1),
        }

    def print_summary(self, data: dict[str, Any], keep_running: bool) -> None:
        hub = data["hub"]
        if self.password is not None:
            login = f"{REVIEWER} / {self.password}   (password shown once: note it now)"
        else:
            login = f"{REVIEWER} (password printed when it was created; new OUT to start over)"
        lines = [
            "",
            "usreview demo: hub, 3 sites and their gateways are running"
            if keep_running
            else "usreview demo: done (hub and gateways stopped after the summary)",
            f"  hub        {hub['url']}/   (TLS certificate {hub['certificate']})",
            f"  sites      {hub['sites_url']}/   (the clinics' own port: the usreview service)",
            f"  reviewer   {login}",
            f"             log in at {hub['login']}: the worklist of every site's studies opens",
            "",
            f"  {'site':<10} {'kinds':<18} {'sent':>5} {'acknowledged':>13}  results in its outbox",
        ]
        for site in data["sites"]:
            files = site["outbox_files"]
            lines.append(
                f"  {site['name']:<10} {', '.join(site['kinds']):<18} "
                f"{site['instances_sent']:>5} {site['acknowledged']:>13}  "
                f"{sum(files.values())} ({_kinds_text(files)})"
            )
        lines += ["", "  measurements (mean over complete cycles; truth from the simulator)"]
        for item in data["measurements"]:
            shown = _SHOWN.get(item["kind"])
            if not shown:
                continue
            parts = []
            for name, label in shown:
                q = item["quantities"].get(name)
                if q is None:
                    continue
                true = item["truth"].get(name)
                unit = "" if q["unit"] == "1" else f" {q['unit']}"
                truth = f" (truth {true:.3g})" if isinstance(true, int | float) else ""
                parts.append(f"{label} {q['value']:.3g}{unit}{truth}")
            lines.append(f"    {item['site']} {item['kind']}: " + ", ".join(parts))
        first = next(iter(self.sites))
        lines += [
            "",
            f"  results are in each site's outbox, e.g. {first.folder / 'outbox'}",
            f"  status of a site: usreview site status --config {first.config}",
            f"  logs: {data['logs']}; summary: {self.out / 'summary.json'}",
            f"  ready in {data['seconds_to_summary']:.1f} s"
            + ("; Ctrl-C stops the hub and the gateways" if keep_running else ""),
        ]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()

    def run(self, exit_after_summary: bool) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self._stop_leftovers()
        self.simulate()
        self.start_hub()
        self.add_reviewer()
        self.enroll()
        self.start_gateways()
        self.send()
        self.wait_for_receipts()
        self.wait_for_processing()
        self.wait_for_outboxes()
        data = self.summary()
        (self.out / "summary.json").write_text(json.dumps(data, indent=2) + "\n")
        self.print_summary(data, keep_running=not exit_after_summary)
        if exit_after_summary:
            return 0
        try:
            while True:
                self._check_children()
                time.sleep(1.0)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the way to stop it once it is ready
            _say("stopping the gateways and the hub ...")
            return 0


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has ended


def _remove_site_folder(folder: Path) -> None:
    import shutil

    if not (folder / "site.toml").exists() and any(folder.iterdir()):
        raise DemoError(f"{folder} is not a site folder of the demo; move it away")
    shutil.rmtree(folder)


def _truth_values(truth: dict[str, Any], quantities: Iterable[str]) -> dict[str, float]:
    found: dict[str, float] = {}
    nested = [v for v in truth.values() if isinstance(v, dict)]
    for name in quantities:
        key = _TRUTH_KEYS.get(name)
        if key is None:
            continue
        for place in (truth, *nested):
            value = place.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                found[name] = float(value)
                break
    return found


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Raise :class:`KeyboardInterrupt` on SIGINT and SIGTERM while the block runs.

    A SIGTERM handler installed before (in Python) is kept: the command line's raises its
    own interrupt, which it answers with exit status 143 as for every command (130: Ctrl-C).
    """

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starting the demo in the background may have ignored it.
    handlers: dict[signal.Signals, Callable[[int, FrameType | None], Any]] = {
        signal.SIGINT: signal.default_int_handler
    }
    if not callable(signal.getsignal(signal.SIGTERM)):
        handlers[signal.SIGTERM] = raise_interrupt
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_demo(
    out: Path,
    *,
    port: int | None = None,
    exit_after_summary: bool = False,
    timeout: float = 120.0,
) -> int:
    """Run the demo in ``out`` (see the module docstring); return the exit status.

    Every child process is stopped before this returns or raises, also on Ctrl-C or
    SIGTERM.

    Raises
    ------
    UsreviewError
        A step failed (:class:`DemoError`, or the error of the package that failed).
    KeyboardInterrupt
        Interrupted before the summary.
    """
    demo = _Demo(Path(out), port, timeout)
    with _sigterm_as_interrupt():
        try:
            return demo.run(exit_after_summary)
        finally:
            demo.stop()
