"""Sealed envelopes: what a site sends to the hub and the hub sends back.

An envelope is readable only by its recipients and proves its sender: HPKE (RFC 9180)
wraps a fresh message key for each recipient, the payload is a chunked AES-256-GCM
stream bound to the header, the header commits to the key, and the sender signs header
and ciphertext with Ed25519. Sealing and opening stream in constant memory; opening
releases its output only when everything verifies. Format: ``docs/envelope.md``.

Errors (all :class:`usreview.errors.EnvelopeError`)::

    EnvelopeError
    ├── NotAnEnvelopeError        the bytes do not start like a usreview envelope
    ├── UnsupportedVersionError   a format version or cipher suite this usreview cannot read
    ├── TruncatedError            the envelope ends early (header, chunk, final chunk, signature)
    ├── TamperedError             authentication failed: header, a chunk, the key commitment
    │   ├── SignatureError        the sender's signature over the payload does not verify
    │   └── TrailingDataError     bytes follow the signature
    ├── NotARecipientError        the envelope is not addressed to this key
    ├── UntrustedSenderError      the sender's key is not in the key ring
    ├── RevokedKeyError           a sender or recipient key is revoked
    ├── RetiredKeyError           sealing to (or with) a retired key
    ├── ExpiredError              past the end of the validity window
    ├── NotYetValidError          before the start of the validity window
    ├── ReplayedError             this message was already opened here
    ├── KeyFileError              a key file that cannot be used
    │   └── PassphraseError       its passphrase is missing or wrong
    └── KeyTransitionError        a key transition (a rotated identity's next key) that
                                  does not verify (:mod:`usreview.envelope.transitions`)
"""

from __future__ import annotations

from usreview.envelope.errors import (
    EnvelopeError,
    ExpiredError,
    KeyFileError,
    NotAnEnvelopeError,
    NotARecipientError,
    NotYetValidError,
    PassphraseError,
    ReplayedError,
    RetiredKeyError,
    RevokedKeyError,
    SignatureError,
    TamperedError,
    TrailingDataError,
    TruncatedError,
    UnsupportedVersionError,
    UntrustedSenderError,
)
from usreview.envelope.format import CHUNK_SIZE, FORMAT_VERSION
from usreview.envelope.keyring import KeyRing, KeyState, TrustedKey
from usreview.envelope.keys import (
    PrivateKeys,
    PublicKeys,
    generate_keys,
    load_private_keys,
    load_public_keys,
    write_key_pair,
)
from usreview.envelope.replay import ReplayCache
from usreview.envelope.seal import EnvelopeInfo, seal, seal_file
from usreview.envelope.transitions import (
    HUB_CERTIFICATE,
    KeyTransition,
    KeyTransitionError,
    follow_transitions,
    read_transitions,
    sign_announcement,
    sign_transition,
    trusted_keys,
    verify_announcement,
    write_transitions,
)
from usreview.envelope.unseal import unseal, unseal_file

__all__ = [
    "CHUNK_SIZE",
    "FORMAT_VERSION",
    "HUB_CERTIFICATE",
    "EnvelopeError",
    "EnvelopeInfo",
    "ExpiredError",
    "KeyFileError",
    "KeyRing",
    "KeyState",
    "KeyTransition",
    "KeyTransitionError",
    "NotARecipientError",
    "NotAnEnvelopeError",
    "NotYetValidError",
    "PassphraseError",
    "PrivateKeys",
    "PublicKeys",
    "ReplayCache",
    "ReplayedError",
    "RetiredKeyError",
    "RevokedKeyError",
    "SignatureError",
    "TamperedError",
    "TrailingDataError",
    "TruncatedError",
    "TrustedKey",
    "UnsupportedVersionError",
    "UntrustedSenderError",
    "follow_transitions",
    "generate_keys",
    "load_private_keys",
    "load_public_keys",
    "read_transitions",
    "seal",
    "seal_file",
    "sign_announcement",
    "sign_transition",
    "trusted_keys",
    "unseal",
    "unseal_file",
    "verify_announcement",
    "write_key_pair",
    "write_transitions",
]
