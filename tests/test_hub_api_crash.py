"""Crash safety of the service: kill -9 it at random points during a stream of uploads.

Everything is real here: the hub, its proxy and TLS, the site's token checked by the hub,
and the service started again by the hub itself, with its own command, environment and
working directory, on the same port: JupyterHub checks its managed services every
``SERVICE_POLL_SECONDS`` and starts one that exited again
(:func:`usreview.hub.config.poll_services_every`).

The site keeps sending: an upload without an answer is sent again (the same envelope),
and some acknowledged ones are sent again on purpose (answered 200). At the end every
instance that got a 201 or 200 must be stored once, with the bytes the site sent, and
the archive must check clean.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
import requests

from tests.hub_api_support import USREVIEW, HubRun, Site, service_pids
from usreview.envelope import KeyRing, PublicKeys, load_public_keys, seal_file, unseal_file
from usreview.ingest import verify_receipt
from usreview.store import Archive, Reviewer

pytestmark = pytest.mark.slow

# The issue asks for 40 kill -9 iterations; the hub's restart answers in about 3 s on two
# cores (a second to notice, then the service's start; longer while the hub's processing
# of the stream competes for them).
MIN_KILLS, MAX_KILLS, BUDGET = 40, 40, 60.0


@dataclass
class Upload:
    uid: str
    sha256: str
    envelope: bytes


@dataclass
class Stream:
    """A site sending instances until told to stop; what was acknowledged."""

    hub: HubRun
    site: Site
    hub_public: PublicKeys
    template: pydicom.Dataset
    folder: Path
    acked: dict[str, str] = field(default_factory=dict)  # uid -> plaintext sha256
    statuses: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    pending: deque[Upload] = field(default_factory=deque)
    stop: threading.Event = field(default_factory=threading.Event)

    def make(self, n: int) -> Upload:
        dataset = self.template.copy()
        dataset.SOPInstanceUID = f"2.25.4242{n}"
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.InstanceNumber = n
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        plaintext = self.folder / f"{n}.dcm"
        plaintext.write_bytes(buffer.getvalue())
        sealed = self.folder / f"{n}.env"
        seal_file(plaintext, sealed, sender=self.site.keys, recipients=[self.hub_public])
        upload = Upload(
            dataset.SOPInstanceUID,
            hashlib.sha256(buffer.getvalue()).hexdigest(),
            sealed.read_bytes(),
        )
        plaintext.unlink()
        sealed.unlink()
        return upload

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            if not self.pending:
                self.pending.append(self.make(n))
                n += 1
            upload = self.pending[0]
            try:
                response = self.hub.upload(upload.uid, upload.envelope, self.site.token)
            except requests.RequestException as exc:
                self.statuses[type(exc).__name__] += 1
                time.sleep(0.05)
                continue
            self.statuses[str(response.status_code)] += 1
            if response.status_code in (200, 201):
                body = verify_receipt(response.json()["receipt"], self.hub_public, site="sitea")
                if body["plaintext_sha256"] != upload.sha256:
                    self.unexpected.append(f"{upload.uid}: receipt names other bytes")
                self.acked[upload.uid] = upload.sha256
                self.pending.popleft()
                if n % 5 == 0 and response.status_code == 201:
                    self.pending.append(upload)  # send it again: a duplicate
            elif response.status_code in (502, 503):  # the proxy: no service right now
                time.sleep(0.05)
            else:
                self.unexpected.append(f"{upload.uid}: {response.status_code} {response.text}")
                self.pending.popleft()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubRun]:
    run = HubRun(tmp_path_factory.mktemp("crash"), {"parse_workers": 1})
    run.start()
    try:
        yield run
    finally:
        run.stop()


def _dead(pid: int) -> bool:
    """Gone, or a zombie: its port, files and lock are released; only its parent's
    ``wait`` is missing (the hub reaps the service at its next check)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not all(_dead(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_kill_minus_9_during_uploads_loses_no_acknowledged_instance(hub: HubRun) -> None:
    from usreview.simulate import simulate

    rng = random.Random(20261126)
    folder = hub.root / "work"
    folder.mkdir()
    site = hub.add_site("sitea")
    hub_public = load_public_keys(hub.state / "hub.pub")
    template = pydicom.dcmread(simulate("bmode", folder / "template", seed=3)[0])
    stream = Stream(hub, site, hub_public, template, folder)
    sender = threading.Thread(target=stream.run, daemon=True)
    kills, restarts = 0, []
    started = time.monotonic()
    sender.start()
    try:
        while kills < MAX_KILLS and (kills < MIN_KILLS or time.monotonic() - started < BUDGET):
            time.sleep(rng.uniform(0.05, 1.2))  # kill at a random point of the stream
            _kill(service_pids(hub.state))
            kills += 1
            restarts.append(hub.wait_for_service(timeout=60))
        acked_during = len(stream.acked)
        time.sleep(1.0)  # a last stretch without kills
    finally:
        stream.stop.set()
        sender.join(60)
    elapsed = time.monotonic() - started
    print(
        f"{kills} kills in {elapsed:.1f} s, restart {min(restarts):.2f}-{max(restarts):.2f} s, "
        f"{len(stream.acked)} acknowledged ({acked_during} while killing), {dict(stream.statuses)}"
    )
    assert not stream.unexpected, stream.unexpected[:5]
    assert kills >= MIN_KILLS and acked_during >= kills

    unacked = {u.uid for u in stream.pending}
    with Archive.open(None, hub.state / "archive") as archive:
        report = archive.fsck()
        assert report.clean, report
        records = archive.list_instances(Reviewer("test"))
        counts = Counter(r.sop_instance_uid for r in records)
        assert max(counts.values()) == 1
        assert set(stream.acked) <= set(counts) <= set(stream.acked) | unacked
        ring = KeyRing([load_public_keys(hub.state / "sites" / "sitea.pub")])
        from usreview.envelope import load_private_keys

        hub_keys = load_private_keys(hub.state / "hub.key")
        for record in records:
            assert record.plaintext_sha256 == stream.acked.get(record.sop_instance_uid, "?") or (
                record.sop_instance_uid in unacked
            )
        for uid, sha in rng.sample(sorted(stream.acked.items()), 20):
            sealed, opened = folder / f"check-{uid}.env", folder / f"check-{uid}.dcm"
            sealed.write_bytes(archive.read_envelope(Reviewer("test"), uid))
            unseal_file(sealed, opened, recipient=hub_keys, keyring=ring)
            assert hashlib.sha256(opened.read_bytes()).hexdigest() == sha
    verified = subprocess.run(
        [*USREVIEW, "hub", "audit", "--verify", "--state", str(hub.state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
