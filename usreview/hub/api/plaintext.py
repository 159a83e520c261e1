"""A stored instance opened back into its plaintext DICOM, for one read.

The archive keeps each instance as the envelope its site signed. Everything that reads
an instance's content (downloads, frames, teaching copies, reports, the processing
worker, an administrator's export of an envelope kept aside as a conflict) opens it
here: with the hub's key and every key the site has had (they were verified when the
envelope arrived), as of the envelope's own start of validity (the archive vouches that
it was valid when stored), then checks the plaintext against the hash recorded when it
arrived.

The plaintext is a scratch copy that its caller reads and removes at once, so it is
written without fsync: the envelope is the durable object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, cast

from usreview.envelope import PrivateKeys, unseal
from usreview.envelope.format import read_header
from usreview.envelope.stream import Source
from usreview.hub.api.sitekeys import SiteKeyFiles
from usreview.store import Archive, CorruptObjectError, InstanceRecord, Reviewer

__all__ = ["open_kept", "open_stored"]


def open_stored(
    archive: Archive,
    reviewer: Reviewer,
    record: InstanceRecord,
    out: Path,
    *,
    hub_keys: PrivateKeys | Sequence[PrivateKeys],
    site_keys: SiteKeyFiles,
    durable: bool = False,
) -> None:
    """Open the stored envelope of ``record`` into the new file ``out`` (mode 0600).

    On any failure no ``out`` file exists. ``durable`` fsyncs ``out`` (a file kept, not
    a scratch copy).

    Raises
    ------
    CorruptObjectError
        The site has no key, the envelope does not open, or its plaintext is not what
        was stored.
    """
    with archive.open_envelope(reviewer, record.sop_instance_uid) as src:
        open_kept(
            src,
            out,
            site=record.site,
            plaintext_sha256=record.plaintext_sha256,
            what=f"the stored instance {record.sop_instance_uid}",
            hub_keys=hub_keys,
            site_keys=site_keys,
            durable=durable,
        )


def open_kept(
    src: BinaryIO,
    out: Path,
    *,
    site: str,
    plaintext_sha256: str,
    what: str,
    hub_keys: PrivateKeys | Sequence[PrivateKeys],
    site_keys: SiteKeyFiles,
    durable: bool = False,
) -> None:
    """Open an envelope the archive keeps (read from ``src``) into the new file ``out``.

    ``site`` sent it, and its plaintext hashed to ``plaintext_sha256`` when it arrived;
    ``what`` names it in errors. An instance (:func:`open_stored`) or an envelope kept
    aside as a conflict. ``durable`` fsyncs ``out`` (a file kept, not a scratch copy).

    Raises
    ------
    CorruptObjectError
        The site has no key, the envelope does not open, or its plaintext has changed.
    """
    try:
        ring = site_keys.stored_ring(site)
    except KeyError:
        raise CorruptObjectError(f"site {site} has no key to open {what}") from None
    header, _ = read_header(src)
    src.seek(0)
    try:
        unseal(
            cast(Source, src),  # a buffered file: it has readinto
            out,
            recipient=hub_keys,
            keyring=ring,
            now=header.not_before,
            durable=durable,
        )
    except Exception as exc:
        raise CorruptObjectError(f"the envelope of {what} does not open ({exc})") from exc
    with open(out, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != plaintext_sha256:
        out.unlink()
        raise CorruptObjectError(f"{what} has changed since it arrived")
