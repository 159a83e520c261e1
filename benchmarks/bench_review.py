"""The reading station in headless chromium through the hub: worklist, first frame, cine rate.

A real hub (proxy, service, worker) with one site sending, by C-STORE through its gateway,
a cine of 100 frames of 600x800 at 50 frames/s; 5,000 more studies from 60 sites written
into the hub's archive index (:func:`benchmarks._worklist.fill`). A reviewer logs in
through the hub's form in Debian's chromium (Playwright, launched as the browser tests
do: :func:`benchmarks._support.launched_chromium`) and lands on the worklist.

Measured, each against a baseline of the same run:

- worklist load: navigation to the worklist page until its table shows every study,
  against an empty Voila dashboard on the same server (the kernel start every other page
  pays); goal under 2 s. Each worklist page gets a kernel nobody has used, which the
  reviewer's server started and ran the worklist in before the page was asked for
  (:mod:`usreview.hub.kernel_pool`); loads are a few seconds apart, as a reviewer's are,
  so that the server has replaced it;
- ``GET /studies`` at the service (5,000 studies), median;
- opening the cine study from the worklist until its first frame is drawn, and until
  every frame is in the browser: once with nothing cached, then from a worklist page
  loaded anew each time (a new kernel) with the service's frame cache warm;
- sustained cine rate while playing, against the study's own frame rate and the
  browser's display rate (requestAnimationFrame); goal: the study's rate, at least 30/s.

``USREVIEW_BENCH_SCALE`` scales the number of studies (default 1: 5,000).
"""

from __future__ import annotations

import json
import ssl
import statistics
import time
import urllib.request
from typing import Any

from benchmarks._support import (
    HubProcess,
    c_store,
    enroll_site,
    free_port,
    hub_workdir,
    launched_chromium,
    scale,
    start_gateway,
)
from benchmarks._worklist import fill

RUNS = 5
SETTLE_S = 4.0  # between page loads: the server replaces the warm kernel a page took
FRAMES, ROWS, COLUMNS, RATE = 100, 600, 800, 50.0
# The first frame drawn (data-ready before the cine showed a first frame on its own).
SHOWN = ".usr-cine:is([data-shown=true], [data-ready=true])"
# In the page: when Open was clicked, the study page appeared, its first frame was drawn.
WATCH = """() => { const t = window.usrBench = {};
  document.addEventListener("click", (e) => {
    if (!t.click && e.target.closest(".usr-open")) t.click = performance.now(); }, true);
  new MutationObserver(() => {
    if (!t.page && document.querySelector(".usreview-study-page")) t.page = performance.now();
    if (!t.shown && document.querySelector(SHOWN)) t.shown = performance.now();
  }).observe(document.body, { subtree: true, childList: true, attributes: true });
}""".replace("SHOWN", repr(SHOWN))
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}
EMPTY = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "empty",
            "metadata": {},
            "outputs": [],
            "source": "import ipywidgets\nipywidgets.HTML('<b class=\"bench-ready\">ready</b>')",
        }
    ],
    "metadata": {"kernelspec": KERNEL},
    "nbformat": 4,
    "nbformat_minor": 5,
}


def _api(hub: HubProcess, token: str, path: str) -> tuple[float, Any]:
    context = ssl.create_default_context(cafile=str(hub.state.tls_cert))
    request = urllib.request.Request(
        f"{hub.url}/services/usreview/api/v1{path}", headers={"Authorization": f"token {token}"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, context=context, timeout=120) as answer:
        body = json.loads(answer.read())
    return time.perf_counter() - started, body


def _token(hub: HubProcess, person: str, password: str) -> str:
    context = ssl.create_default_context(cafile=str(hub.state.tls_cert))
    request = urllib.request.Request(
        f"{hub.url}/hub/api/users/{person}/tokens",
        data=json.dumps({"auth": {"username": person, "password": password}}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, context=context, timeout=60) as answer:
        return str(json.loads(answer.read())["token"])


def _marks(page: Any) -> dict[str, float]:
    """Seconds from the click to the study page, and from the study page to its first frame."""
    t = page.evaluate("() => window.usrBench")
    return {"page": (t["page"] - t["click"]) / 1000, "frame": (t["shown"] - t["page"]) / 1000}


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"review benchmark: timed out waiting for {what}")
        time.sleep(0.5)
    return value


def main() -> None:
    from usreview.hub.commands import add_user
    from usreview.simulate import simulate
    from usreview.store import Archive

    count = max(100, round(5000 * scale()))
    with hub_workdir("usreview-bench-review-", None) as root:
        hub = HubProcess.start(root / "hub", free_port(), root / "hub.log")
        gateway = None
        try:
            password = add_user(hub.state.root, "reader", "reviewer").password
            token = _token(hub, "reader", password)
            port = free_port()
            config = enroll_site(hub.state, hub.url, "echo-lab", root / "site", port=port)
            gateway = start_gateway(config, root / "gateway.log")
            cine = simulate(
                "cine", root / "cine", seed=5, frames=FRAMES, rows=ROWS, columns=COLUMNS,
                frame_rate_hz=RATE,
            )  # fmt: skip
            truth = json.loads(cine[0].with_name(cine[0].stem + ".truth.json").read_text())
            uid = str(truth["study_instance_uid"])
            outcome = c_store(cine, port)
            assert not outcome.failed, outcome.failed

            def analysed() -> bool:
                try:
                    _, study = _api(hub, token, f"/studies/{uid}")
                except OSError:
                    return False
                states = [
                    (i.get("processing") or {}).get("status")
                    for s in study["series"]
                    for i in s["instances"]
                ]
                return bool(states) and all(s in ("done", "failed") for s in states)

            _wait(analysed, 300, "the cine to be stored and processed")
            started = time.perf_counter()
            with Archive.open(None, hub.state.root / "archive") as archive:
                fill(archive, studies=count, sites=60)
            seconds = time.perf_counter() - started
            print(f"archive: {count} studies from 60 sites written in {seconds:.1f} s")
            service = sorted(_api(hub, token, "/studies")[0] for _ in range(5))
            total = count + 1

            with launched_chromium() as browser:
                page = browser.new_context(
                    ignore_https_errors=True, viewport={"width": 1500, "height": 1000}
                ).new_page()
                page.goto(hub.url + "/hub/login")
                page.fill("input[name=username]", "reader")
                page.fill("input[name=password]", password)
                login = time.perf_counter()
                page.click("[type=submit]")
                page.wait_for_selector(".usr-worklist[data-total]", timeout=180_000)
                first = time.perf_counter() - login
                base = page.url.split("/voila/")[0]
                home = hub.state.homes / "reader" / "bench"
                home.mkdir(exist_ok=True)
                (home / "empty.ipynb").write_text(json.dumps(EMPTY))

                def load(url: str, ready: str) -> float:
                    time.sleep(SETTLE_S)
                    began = time.perf_counter()
                    page.goto(url)
                    page.wait_for_function(ready, timeout=120_000)
                    return time.perf_counter() - began

                worklist_ready = (
                    "document.querySelector('.usr-worklist') && "
                    f"Number(document.querySelector('.usr-worklist').dataset.total) >= {total}"
                )
                empty_ready = "document.querySelector('.bench-ready') !== null"
                worklist, empty = [], []
                for _ in range(RUNS):
                    empty.append(load(f"{base}/voila/render/bench/empty.ipynb", empty_ready))
                    worklist.append(
                        load(f"{base}/voila/render/usreview/worklist.ipynb", worklist_ready)
                    )
                render_ms = float(page.get_attribute(".usr-worklist", "data-render-ms") or "nan")

                opened: list[tuple[float, float]] = []  # (first frame, every frame) in s
                in_page: list[dict[str, float]] = []  # the browser's own times, ms
                for run in range(RUNS):
                    if run:  # the worklist again, in a new kernel: the kernel caches nothing
                        load(f"{base}/voila/render/usreview/worklist.ipynb", worklist_ready)
                    page.fill(".usr-wl-query", uid)
                    row = page.locator(f".usr-wl-row[data-uid='{uid}']")
                    row.wait_for(timeout=30_000)
                    began = time.perf_counter()
                    page.evaluate(WATCH)
                    row.locator(".usr-open").click()
                    page.wait_for_selector(SHOWN, timeout=120_000)
                    shown = time.perf_counter() - began
                    marks = _marks(page)
                    page.wait_for_selector(".usr-cine[data-ready=true]", timeout=120_000)
                    opened.append((shown, time.perf_counter() - began))
                    in_page.append(marks)
                display = page.evaluate(
                    """() => new Promise(done => { let n = 0; const t0 = performance.now();
                    const f = (t) => { n++; if (t - t0 < 2000) requestAnimationFrame(f);
                    else done(n * 1000 / (t - t0)); }; requestAnimationFrame(f); })"""
                )
                page.click(".usr-cine .usr-play")
                rates = []
                for _ in range(5):
                    page.wait_for_timeout(1100)
                    rates.append(float(page.get_attribute(".usr-cine", "data-fps") or "0"))
        finally:
            if gateway is not None:
                gateway.stop()
            hub.stop()

    w, e = statistics.median(worklist), statistics.median(empty)
    sustained = statistics.median(rates[1:])
    print(f"first login (spawns the reviewer's server) to worklist: {first:.1f} s")
    print(
        f"worklist of {total} studies, page load (warm kernel): median {w:.2f} s "
        f"(runs {', '.join(f'{x:.2f}' for x in worklist)}); in-browser filter+sort+draw "
        f"{render_ms:.0f} ms"
    )
    print(
        f"  baseline: empty Voila dashboard (new kernel) {e:.2f} s -> ratio {w / e:.2f}; "
        f"difference {w - e:+.2f} s; goal < 2 s: "
        f"{'met' if w < 2.0 else 'NOT met'}"
    )
    print(
        f"GET /studies ({total} studies) at the service: median {statistics.median(service):.3f} s"
    )
    first_frame, every_frame = zip(*opened, strict=True)
    warm = statistics.median(first_frame[1:])
    print(
        f"open the 100-frame 600x800 cine from the worklist to its first frame: first open "
        f"{first_frame[0]:.2f} s, then (a new kernel each, the service's frame cache warm) "
        f"median {warm:.2f} s (runs {', '.join(f'{x:.2f}' for x in first_frame)}); "
        f"goal < 1 s: {'met' if max(first_frame) < 1.0 else 'NOT met'}"
    )
    to_page = ", ".join(f"{m['page']:.2f}" for m in in_page)
    to_frame = ", ".join(f"{m['frame']:.2f}" for m in in_page)
    print(
        f"  in the browser: click to study page {to_page} s; study page to its first frame "
        f"{to_frame} s (median {statistics.median(m['frame'] for m in in_page):.2f})"
    )
    print(
        f"  to every frame in the browser: median {statistics.median(every_frame):.2f} s "
        f"(runs {', '.join(f'{x:.2f}' for x in every_frame)})"
    )
    print(
        f"cine playing: {sustained:.1f} frames/s sustained (samples "
        f"{', '.join(f'{r:.0f}' for r in rates)}); study rate {RATE:.0f}, display {display:.0f}/s "
        f"-> ratio to study {sustained / RATE:.2f}, to display {sustained / display:.2f}; "
        f"goal >= min(study rate, 30): {'met' if sustained >= min(RATE, 30.0) else 'NOT met'}"
    )
