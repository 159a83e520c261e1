"""Errors of sealed envelopes, all under :class:`usreview.errors.EnvelopeError`.

::

    EnvelopeError
    ├── NotAnEnvelopeError        the bytes do not start like a usreview envelope
    ├── UnsupportedVersionError   a format version or cipher suite this usreview cannot read
    ├── TruncatedError            the envelope ends early (header, chunk, final chunk or signature)
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
    └── KeyFileError              a key file that cannot be used
        └── PassphraseError       its passphrase is missing or wrong

Every message names what failed in words a user understands; key ids are shown as
their first 16 hex digits.
"""

from __future__ import annotations

from usreview.errors import EnvelopeError

__all__ = [
    "EnvelopeError",
    "ExpiredError",
    "KeyFileError",
    "NotARecipientError",
    "NotAnEnvelopeError",
    "NotYetValidError",
    "PassphraseError",
    "ReplayedError",
    "RetiredKeyError",
    "RevokedKeyError",
    "SignatureError",
    "TamperedError",
    "TrailingDataError",
    "TruncatedError",
    "UnsupportedVersionError",
    "UntrustedSenderError",
]


class NotAnEnvelopeError(EnvelopeError):
    """The input does not start with the envelope magic bytes."""


class UnsupportedVersionError(EnvelopeError):
    """The envelope declares a format version or cipher suite this usreview cannot open."""


class TruncatedError(EnvelopeError):
    """The envelope ends before its final chunk and signature (cut short in transit or storage)."""


class TamperedError(EnvelopeError):
    """Authentication failed: the envelope was altered after sealing."""


class SignatureError(TamperedError):
    """The sender's signature over header and ciphertext does not verify (altered or forged)."""


class TrailingDataError(TamperedError):
    """Bytes follow the envelope's signature."""


class NotARecipientError(EnvelopeError):
    """The envelope has no key wrapped for this recipient."""


class UntrustedSenderError(EnvelopeError):
    """The sender's key is not in the receiver's key ring."""


class RevokedKeyError(EnvelopeError):
    """A key marked revoked in the key ring: refused for sealing and for opening."""


class RetiredKeyError(EnvelopeError):
    """A retired key: it still opens old envelopes but seals no new ones."""


class ExpiredError(EnvelopeError):
    """The envelope's validity window has ended."""


class NotYetValidError(EnvelopeError):
    """The envelope's validity window has not started (check both clocks)."""


class ReplayedError(EnvelopeError):
    """This message id from this sender was already opened (replay)."""


class KeyFileError(EnvelopeError):
    """A key file is unreadable, malformed, of the wrong kind, or readable by others."""


class PassphraseError(KeyFileError):
    """The private key file is passphrase-protected and the passphrase is missing or wrong."""
