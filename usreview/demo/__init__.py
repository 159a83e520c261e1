"""``usreview demo``: the whole system on one machine, on embedded defaults.

:func:`run_demo` does, with one progress line on stderr per step:

1. simulate each site's studies (``OUT/studies/SITE/KIND/``, kept for the next run);
2. start the hub (``usreview hub``: state in ``OUT/hub``, TLS, 127.0.0.1, the port of the
   last run, else 8000, else a free one);
3. add a reviewer (the generated password is printed once, when the reviewer is created);
4. enroll three sites as their people would (``usreview site init`` in
   ``OUT/sites/NAME``, ``usreview hub add-site``, token and hub key into the folder);
5. start their gateways (``usreview site gateway``);
6. send each site's studies to its gateway by DICOM C-STORE, as a scanner would;
7. wait for the hub's signed receipts naming every instance sent;
8. wait until the hub's automatic worker (the ``usreview-worker`` service) has processed
   every stored instance and sealed its results (a DICOM SR and a JSON summary) to its site;
9. wait until every site's outbox holds those results;
10. print the summary (also in ``OUT/summary.json``) and keep the hub and the gateways
    running until Ctrl-C, or stop them at once (``exit_after_summary``).

Running it again on the same ``OUT`` reuses everything (same keys, sites, studies; the
hub acknowledges the instances again as duplicates and processes nothing twice). Children
left by a demo that was killed are stopped first. Logs of the children are in ``OUT/logs/``.

The helpers, in :mod:`usreview.demo.parts` (:class:`HubProcess`, :func:`enroll_site`,
:func:`start_gateway`, :func:`wait_for_port`, :func:`c_store`, :func:`held_at_hub`,
:func:`measure_stored`, :func:`publish_measurements`) are also what the benchmarks drive
(the latency benchmark publishes with :func:`publish_measurements` as kind
``measurements``); the steps are in :mod:`usreview.demo.run`.
"""

from __future__ import annotations

from usreview.demo.parts import (
    DEFAULT_HUB_PORT,
    SCANNER_AE,
    SITES,
    Child,
    DemoError,
    DemoSite,
    HubProcess,
    StoreOutcome,
    c_store,
    enroll_site,
    free_port,
    held_at_hub,
    measure_stored,
    publish_measurements,
    start_gateway,
    wait_for_port,
)
from usreview.demo.run import run_demo

__all__ = [
    "DEFAULT_HUB_PORT",
    "SCANNER_AE",
    "SITES",
    "Child",
    "DemoError",
    "DemoSite",
    "HubProcess",
    "StoreOutcome",
    "c_store",
    "enroll_site",
    "free_port",
    "held_at_hub",
    "measure_stored",
    "publish_measurements",
    "run_demo",
    "start_gateway",
    "wait_for_port",
]
