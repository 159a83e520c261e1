"""Key transitions: an identity's previous key vouches for its next one.

Sites pin the hub's public key (``hub.pub``). When the hub replaces its key
(``usreview hub rotate-key``) it writes a *transition*: the new public key, signed by the
previous private key (the authority the sites already trust) and by the new one (proof
that the hub holds it). A site that meets a key it does not know (a receipt or a result
signed by it) asks the hub for its transitions and follows them from its pinned key with
:func:`follow_transitions`: only a chain that starts at a key it trusts and where every
step verifies is adopted, so the hub's answer need not be trusted.

Wire form (JSON)::

    {"type": "usreview-key-transition", "version": 1, "previous_key_id": HEX,
     "key": "<the new key's .pub text>", "at": "2026-11-29T07:00:00+00:00",
     "signature": B64, "proof": B64}

Both signatures are Ed25519 over ``"usreview-key-transition/v1\\0" || canonical JSON of
every other field``. A transition that *revokes* (``usreview hub rotate-key --revoke``: the
replaced key is believed stolen) also holds ``"revokes": true``, signed with the rest: a
holder that follows it stops trusting every key it reached before that step, the pinned
one included, and follows no later step that starts at one of them (a thief's rival
chain). Transitions without it are as before.

An *announcement* is text an identity vouches for with its current key, for holders who
trust that key: the hub announces the TLS certificate it will serve next, so that sites
trust it before the switch (:func:`sign_announcement`, :func:`verify_announcement`)::

    {"kind": "hub-certificate", "text": "...", "key_id": HEX, "signature": B64}

signed over ``"usreview-announcement/v1\\0" || kind || "\\0" || text``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature

from usreview.envelope.atomic import replace_file
from usreview.envelope.errors import EnvelopeError
from usreview.envelope.keys import PrivateKeys, PublicKeys, key_id_hex, parse_public_keys

__all__ = [
    "HUB_CERTIFICATE",
    "KeyTransition",
    "KeyTransitionError",
    "follow_transitions",
    "read_transitions",
    "sign_announcement",
    "sign_transition",
    "trusted_keys",
    "verify_announcement",
    "write_transitions",
]

#: The kind of the hub's announcement of the TLS certificate it serves next.
HUB_CERTIFICATE = "hub-certificate"

_TYPE = "usreview-key-transition"
_VERSION = 1
_CONTEXT = b"usreview-key-transition/v1\0"
_ANNOUNCEMENT = b"usreview-announcement/v1\0"


class KeyTransitionError(EnvelopeError):
    """A transition is malformed, or a step of the chain does not verify."""


@dataclass(frozen=True)
class KeyTransition:
    """``key`` replaces the key ``previous_key_id`` of the same identity, from ``at``."""

    previous_key_id: bytes
    key: PublicKeys
    at: str
    signature: bytes
    """By the previous key."""
    proof: bytes
    """By ``key`` itself."""
    revokes: bool = False
    """Every key before this step is no longer to be trusted (see the module docstring)."""

    def _fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "type": _TYPE,
            "version": _VERSION,
            "previous_key_id": self.previous_key_id.hex(),
            "key": self.key.to_text(),
            "at": self.at,
        }
        if self.revokes:  # absent otherwise: what was signed before stays as it was
            fields["revokes"] = True
        return fields

    def _body(self) -> bytes:
        return _CONTEXT + json.dumps(self._fields(), sort_keys=True, separators=(",", ":")).encode()

    def to_dict(self) -> dict[str, Any]:
        """The wire form (see the module docstring)."""
        b64 = base64.b64encode
        return {
            **self._fields(),
            "signature": b64(self.signature).decode(),
            "proof": b64(self.proof).decode(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeyTransition:
        """Read the wire form (signatures are checked by :meth:`verify`).

        Raises
        ------
        KeyTransitionError
            Not a transition of this version, or a field is missing or malformed.
        """
        if not isinstance(data, Mapping) or data.get("type") != _TYPE:
            raise KeyTransitionError("not a usreview key transition")
        if data.get("version") != _VERSION:
            raise KeyTransitionError(f"unsupported key transition version {data.get('version')!r}")
        revokes = data.get("revokes", False)
        if not isinstance(revokes, bool):
            raise KeyTransitionError("malformed key transition: revokes is not true or false")
        try:
            return cls(
                bytes.fromhex(str(data["previous_key_id"])),
                parse_public_keys(str(data["key"]), "the transition's key"),
                str(data["at"]),
                base64.b64decode(str(data["signature"]), validate=True),
                base64.b64decode(str(data["proof"]), validate=True),
                revokes,
            )
        except (KeyError, ValueError, binascii.Error, EnvelopeError) as exc:
            raise KeyTransitionError(f"malformed key transition: {exc}") from None

    def verify(self, previous: PublicKeys) -> None:
        """Check both signatures, ``previous`` being the key it replaces.

        Raises
        ------
        KeyTransitionError
            ``previous`` is not the key named, or a signature does not verify.
        """
        if previous.key_id != self.previous_key_id:
            raise KeyTransitionError(
                f"the transition replaces key {key_id_hex(self.previous_key_id)}, "
                f"not {key_id_hex(previous.key_id)}"
            )
        body = self._body()
        for signer, signature, who in (
            (previous, self.signature, "previous"),
            (self.key, self.proof, "new"),
        ):
            try:
                signer.ed25519.verify(signature, body)
            except InvalidSignature:
                raise KeyTransitionError(
                    f"the transition to key {key_id_hex(self.key.key_id)} does not verify "
                    f"with the {who} key: altered or forged"
                ) from None


def sign_transition(
    previous: PrivateKeys, new: PrivateKeys, at: datetime | None = None, *, revokes: bool = False
) -> KeyTransition:
    """The transition from ``previous`` to ``new`` (same identity name), signed by both;
    with ``revokes``, it ends the trust of every earlier key."""
    if previous.name != new.name:
        raise KeyTransitionError(
            f"a transition stays within one identity: {previous.name!r} is not {new.name!r}"
        )
    moment = (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    unsigned = KeyTransition(previous.key_id, new.public, moment, b"", b"", revokes)
    body = unsigned._body()
    return KeyTransition(
        previous.key_id,
        new.public,
        moment,
        previous.ed25519.sign(body),
        new.ed25519.sign(body),
        revokes,
    )


def read_transitions(path: Path) -> list[KeyTransition]:
    """The transitions saved in the JSON file ``path`` (none when it is missing).

    Raises
    ------
    KeyTransitionError
        The file is not a JSON list of transitions.
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise KeyTransitionError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, list):
        raise KeyTransitionError(f"{path}: not a list of transitions")
    return [KeyTransition.from_dict(item) for item in data]


def write_transitions(path: Path, steps: Sequence[KeyTransition], *, mode: int) -> None:
    """Replace the JSON file ``path`` with ``steps`` (atomically, fsynced)."""
    text = json.dumps([step.to_dict() for step in steps], indent=1)
    replace_file(path, text.encode(), mode=mode)


def follow_transitions(
    trusted: Iterable[PublicKeys], transitions: Sequence[KeyTransition | Mapping[str, Any]]
) -> list[PublicKeys]:
    """The keys reached from ``trusted`` through ``transitions``, oldest first, without
    those revoked by a later step (see :func:`trusted_keys`). A key already trusted is not
    returned again.

    Raises
    ------
    KeyTransitionError
        As :func:`trusted_keys`.
    """
    start = list(trusted)
    known = {key.key_id for key in start}
    return [key for key in trusted_keys(start, transitions) if key.key_id not in known]


def trusted_keys(
    trusted: Iterable[PublicKeys], transitions: Sequence[KeyTransition | Mapping[str, Any]]
) -> list[PublicKeys]:
    """Every key still trusted after following ``transitions`` from ``trusted``, oldest
    first: ``trusted`` and the keys reached, less those a revoking step ended.

    Transitions are taken in the given order; one that starts at a key not reached (yet),
    or at a key revoked by an earlier step, is skipped, so a site pinned at a later key
    ignores the earlier steps.

    Raises
    ------
    KeyTransitionError
        A transition is malformed, or one that starts at a reached key does not verify
        (the chain is refused: nothing after it is trusted).
    """
    reached = {key.key_id: key for key in trusted}  # in the order reached
    for item in transitions:
        step = item if isinstance(item, KeyTransition) else KeyTransition.from_dict(item)
        previous = reached.get(step.previous_key_id)
        if previous is None:
            continue
        step.verify(previous)
        if step.key.name != previous.name:
            raise KeyTransitionError(
                f"the transition names identity {step.key.name!r}, not {previous.name!r}"
            )
        if step.revokes:
            reached.clear()
        reached.setdefault(step.key.key_id, step.key)
    return list(reached.values())


def _announced(kind: str, text: str) -> bytes:
    return _ANNOUNCEMENT + kind.encode() + b"\0" + text.encode()


def sign_announcement(keys: PrivateKeys, kind: str, text: str) -> dict[str, str]:
    """``text`` of ``kind`` (e.g. ``hub-certificate``), signed by ``keys`` (wire form)."""
    return {
        "kind": kind,
        "text": text,
        "key_id": keys.key_id.hex(),
        "signature": base64.b64encode(keys.ed25519.sign(_announced(kind, text))).decode(),
    }


def verify_announcement(trusted: Iterable[PublicKeys], kind: str, data: Any) -> str:
    """The text of an announcement of ``kind`` signed by one of the ``trusted`` keys.

    Raises
    ------
    KeyTransitionError
        Malformed, of another kind, signed by a key not trusted, or altered.
    """
    if not isinstance(data, Mapping) or data.get("kind") != kind:
        raise KeyTransitionError(f"not an announcement of {kind}")
    text, key_id = data.get("text"), data.get("key_id")
    signer = next((k for k in trusted if k.key_id.hex() == key_id), None)
    if not isinstance(text, str) or signer is None:
        raise KeyTransitionError(f"the announcement of {kind} is not signed by a trusted key")
    try:
        signature = base64.b64decode(str(data.get("signature")), validate=True)
        signer.ed25519.verify(signature, _announced(kind, text))
    except (ValueError, binascii.Error, InvalidSignature):
        raise KeyTransitionError(
            f"the announcement of {kind} does not verify: altered or forged"
        ) from None
    return text
