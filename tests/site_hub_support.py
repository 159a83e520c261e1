"""A real hub for the site's end-to-end tests (``usreview hub`` on free loopback ports), a
site enrolled as its people set it up, and a text report to publish."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.hub_api_support import HubRun
from tests.site_helpers import USREVIEW, free_port

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR


class Hub(HubRun):
    """A real hub for the site's tests (:class:`~tests.hub_api_support.HubRun`), with its
    commands' output, results published in process as processing publishes them, and the
    audit log's events."""

    def publish(
        self,
        payload: Path,
        study: str,
        sites: list[str],
        kind: str,
        *,
        supersedes: int | None = None,
    ) -> int:
        from usreview.hub.api.publish import publish_result
        from usreview.hub.state import open_state
        from usreview.store import Archive

        state = open_state(self.state)
        with Archive.open(None, state.root / "archive") as archive:
            record = publish_result(
                state, archive, study, payload, sites=sites, kind=kind, supersedes=supersedes
            )
        return record.cursor

    def audited(self, actor: str) -> list[dict[str, Any]]:
        """The audit log's events of ``actor``."""
        lines = (self.state / "audit.log").read_text().splitlines()
        events = [json.loads(line) for line in lines if line.strip()]
        return [event for event in events if event.get("actor") == actor]


def enroll(
    hub: Hub, name: str, folder: Path, *, pacs: str | None = None, extra: Sequence[str] = ()
) -> tuple[Path, int]:
    """A site as its people set it up; returns its site.toml and DICOM port."""
    port = free_port()
    args = [*USREVIEW, "site", "init", name, "--hub", hub.url, "--dir", str(folder), *extra]
    args += ["--hub-cert", str(hub.state / "tls.crt"), "--allow-ae", "SCANNER"]
    args += ["--port", str(port)] + (["--pacs", pacs] if pacs else [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    pub = re.search(r"hub's administrator: (\S+)", out)
    assert pub, out
    added = hub.cli("add-site", name, "--public-key", pub.group(1))
    token = re.search(r"shown once: (\S+)", added)
    assert token, added
    (folder / "token").write_text(token.group(1) + "\n")
    (folder / "token").chmod(0o600)
    (folder / "hub.pub").write_text(added[added.index("usreview-public-key v1") :])
    config = folder / "site.toml"
    text = config.read_text().replace("backoff_max = 60.0", "backoff_max = 2.0")
    config.write_text(text.replace("wait = 30.0", "wait = 5.0"))
    return config, port


def text_report(path: Path, study: str) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SR_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SR_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.PatientName = "TEST^SYNTHETIC"
    ds.PatientID = "SYN-1"
    ds.ValueType = "CONTAINER"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.save_as(path, enforce_file_format=True)
    return path
