"""The hub's keys as a site knows them: the one it pinned, and those it followed since.

The site's configuration pins the hub's public key (``hub.public_key``, the ``hub.pub``
that ``usreview hub add-site`` printed). When the hub rotates its key
(``usreview hub rotate-key``) its receipts and results are signed by a key the site does
not know: the site then asks the hub for its keys (``GET hub-keys``) and follows the
signed transitions from the pinned key (:func:`usreview.envelope.follow_transitions`;
each step is signed by the previous key and by the new one, so the answer proves
itself). The transitions it followed are kept in ``STATE/hub-keys.json`` and verified
again whenever they are read; the pinned file is never rewritten.

The site seals to the newest key it trusts; it accepts receipts and results signed by
any of them (an earlier key signed what the hub sent before it rotated). A transition that
revokes (``usreview hub rotate-key --revoke``: a key believed stolen) ends the trust of
every key before it, the pinned one included: what they sign is refused from then on, and
no later step from one of them is followed.

The same answer announces the TLS certificate the hub serves next, signed with its
current key. A site keeps it in ``STATE/hub-certificates.pem`` (with the ones announced
before that have not expired) and trusts it beside ``hub.certificate``
(:class:`~usreview.site.client.HubClient`), so that the hub can switch to it without a
new file for every site. The results follower asks every :data:`REFRESH_SECONDS`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usreview.envelope import (
    HUB_CERTIFICATE,
    KeyTransition,
    KeyTransitionError,
    PublicKeys,
    follow_transitions,
    read_transitions,
    trusted_keys,
    verify_announcement,
    write_transitions,
)
from usreview.envelope.atomic import replace_file

if TYPE_CHECKING:
    from usreview.site.client import HubClient
    from usreview.site.config import SiteConfig

__all__ = [
    "ADOPTED_FILE",
    "ANNOUNCED_CERTIFICATES",
    "REFRESH_SECONDS",
    "adopt_hub_certificate",
    "adopt_hub_keys",
    "changed_hub_keys",
    "followed_hub_keys",
    "refreshed_hub_keys",
]

#: The transitions a site followed, in its state folder.
ADOPTED_FILE = "hub-keys.json"
#: The hub's announced TLS certificates (PEM), in its state folder.
ANNOUNCED_CERTIFICATES = "hub-certificates.pem"
#: How often the results follower asks the hub for its keys and next certificate.
REFRESH_SECONDS = 6 * 3600.0
_log = logging.getLogger(__name__)


def followed_hub_keys(pinned: PublicKeys, state: Path) -> list[PublicKeys]:
    """The hub's keys the site trusts, oldest first: ``pinned``, then those followed, less
    those a revoking step ended.

    Raises
    ------
    KeyTransitionError
        ``STATE/hub-keys.json`` is damaged, or a step in it from a trusted key does not
        verify (remove the file to start over).
    """
    try:
        saved = read_transitions(state / ADOPTED_FILE)
    except KeyTransitionError as exc:
        raise KeyTransitionError(f"{exc}; remove it to start over") from None
    return trusted_keys([pinned], saved)  # steps from other keys: ignored


def adopt_hub_keys(pinned: PublicKeys, state: Path, answer: Any) -> list[PublicKeys]:
    """Follow the transitions of a ``GET hub-keys`` answer; keep them; return the keys
    newly trusted (none: the answer led nowhere new).

    Raises
    ------
    KeyTransitionError
        The answer is malformed, or a step from a trusted key does not verify (nothing
        is kept).
    """
    trusted = followed_hub_keys(pinned, state)
    steps = answer.get("transitions") if isinstance(answer, dict) else None
    if not isinstance(steps, list):
        raise KeyTransitionError("the hub's answer lists no key transitions")
    parsed = [KeyTransition.from_dict(step) for step in steps]
    new = follow_transitions(trusted, parsed)
    if not new:
        return []
    # Keep the steps saved before, then the ones that led to the new keys, in order:
    # reading follows them again from the pinned key.
    saved = read_transitions(state / ADOPTED_FILE)
    reached = {key.key_id for key in trusted} | {key.key_id for key in new}
    seen = {(step.previous_key_id, step.key.key_id) for step in saved}
    kept = saved + [
        step
        for step in parsed
        if step.previous_key_id in reached and (step.previous_key_id, step.key.key_id) not in seen
    ]
    write_transitions(state / ADOPTED_FILE, kept, mode=0o600)
    for key in new:
        _log.info("adopted the hub's key %s (signed by its previous key)", key.key_id.hex()[:16])
    return new


def refreshed_hub_keys(config: SiteConfig, client: HubClient) -> list[PublicKeys]:
    """Ask the hub for its keys, adopt those that follow from the trusted ones, and return
    every hub key the site trusts now, oldest first (as ``config.load_hub_keys()``).

    For a site that met a receipt or a result signed by a key it does not know. Another
    process of the site (the gateway's uploads and its results follower) may have adopted
    it already: callers compare with the keys they hold (:func:`changed_hub_keys`). A
    refused answer, or a hub that cannot be asked, is logged and adopts nothing; the keys
    cannot be read: ``[]``.
    """
    from usreview.site.errors import HubRequestError, HubUnreachableError, SiteConfigError

    answer: Any = None
    try:
        answer = client.hub_keys()
        adopt_hub_keys(config.load_pinned_hub_key(), config.state, answer)
    except HubUnreachableError as exc:  # the caller's own request says so
        _log.info("the hub's keys were not refreshed: %s", exc)
    except (HubRequestError, KeyTransitionError, OSError) as exc:
        _log.warning("the hub's keys were not refreshed: %s", exc)
    try:
        keys = config.load_hub_keys()
    except SiteConfigError as exc:
        _log.warning("the hub's keys cannot be read: %s", exc)
        return []
    announced = answer.get("next_certificate") if isinstance(answer, dict) else None
    if announced is not None:
        try:
            adopt_hub_certificate(keys, config.state, announced)
        except (KeyTransitionError, ValueError, OSError) as exc:
            _log.warning("the hub's next certificate was refused: %s", exc)
    return keys


def changed_hub_keys(
    config: SiteConfig, client: HubClient, held: Sequence[PublicKeys]
) -> list[PublicKeys] | None:
    """:func:`refreshed_hub_keys` when they differ from the keys ``held`` by the caller (a
    rotation or a revocation followed, by this process or another), else ``None``."""
    keys = refreshed_hub_keys(config, client)
    if not keys or [k.key_id for k in keys] == [k.key_id for k in held]:
        return None
    return keys


def adopt_hub_certificate(trusted: list[PublicKeys], state: Path, announced: Any) -> bool:
    """Keep the hub's announced next certificate, once its signature verifies with one of
    the ``trusted`` hub keys; whether it is new. Expired ones are dropped from the file.

    Raises
    ------
    KeyTransitionError
        Not signed by a trusted key, or altered.
    ValueError
        Not PEM certificates.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    text = verify_announcement(trusted, HUB_CERTIFICATE, announced)
    new = x509.load_pem_x509_certificates(text.encode())
    path = state / ANNOUNCED_CERTIFICATES
    try:
        kept = x509.load_pem_x509_certificates(path.read_bytes())
    except (FileNotFoundError, ValueError):
        kept = []
    now = datetime.now(UTC)
    known = {c.public_bytes(Encoding.DER) for c in kept}
    if all(c.public_bytes(Encoding.DER) in known for c in new):
        return False
    chosen = [c for c in kept if c.not_valid_after_utc > now]
    chosen += [c for c in new if c.public_bytes(Encoding.DER) not in known]
    replace_file(path, b"".join(c.public_bytes(Encoding.PEM) for c in chosen), mode=0o644)
    _log.info("trusting the hub's next TLS certificate (announced, signed by its key)")
    return True
