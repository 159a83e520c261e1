"""A stored instance opened back into its plaintext DICOM, for one read.

The archive keeps each instance as the envelope its site signed. Everything that reads
an instance's content (downloads, frames, teaching copies, reports, the processing
worker) opens it here: with the hub's key and every key the site has had (they were
verified when the envelope arrived), as of the envelope's own start of validity (the
archive vouches that it was valid when stored), then checks the plaintext against the
hash recorded at ingest.

The plaintext is a scratch copy that its caller reads and removes at once, so it is
written without fsync: the envelope is the durable object.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import cast

from usreview.envelope import PrivateKeys, unseal
from usreview.envelope.format import read_header
from usreview.envelope.stream import Source
from usreview.hub.api.sitekeys import SiteKeyFiles
from usreview.store import Archive, CorruptObjectError, InstanceRecord, Reviewer

__all__ = ["open_stored"]


def open_stored(
    archive: Archive,
    reviewer: Reviewer,
    record: InstanceRecord,
    out: Path,
    *,
    hub_keys: PrivateKeys,
    site_keys: SiteKeyFiles,
) -> None:
    """Open the stored envelope of ``record`` into the new file ``out`` (mode 0600).

    On any failure no ``out`` file exists.

    Raises
    ------
    CorruptObjectError
        The site has no key, the envelope does not open, or its plaintext is not what
        was stored.
    """
    try:
        ring = site_keys.stored_ring(record.site)
    except KeyError:
        raise CorruptObjectError(f"site {record.site} has no key to open its instances") from None
    with archive.open_envelope(reviewer, record.sop_instance_uid) as src:
        header, _ = read_header(src)
        src.seek(0)
        try:
            unseal(
                cast(Source, src),  # a buffered file: it has readinto
                out,
                recipient=hub_keys,
                keyring=ring,
                now=header.not_before,
                durable=False,
            )
        except Exception as exc:
            raise CorruptObjectError(
                f"the stored envelope of {record.sop_instance_uid} does not open ({exc})"
            ) from exc
    with open(out, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != record.plaintext_sha256:
        out.unlink()
        raise CorruptObjectError(f"the stored instance {record.sop_instance_uid} has changed")
