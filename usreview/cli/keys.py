"""``usreview keys``, ``seal`` and ``unseal``: key pairs and envelopes (owned by
:mod:`usreview.envelope`)."""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from usreview.cli.spec import Arg, Command, arg, duration
from usreview.errors import InputError

if TYPE_CHECKING:
    from usreview.envelope import PrivateKeys

_PASSPHRASE_ENV = "USREVIEW_KEY_PASSPHRASE"


def _passphrase(args: argparse.Namespace) -> bytes | None:
    import os

    if args.passphrase_file is not None:
        lines: list[bytes] = args.passphrase_file.read_bytes().splitlines()
        if not (lines and lines[0]):
            raise InputError(
                f"--passphrase-file {args.passphrase_file}: its first line is empty; "
                "write the passphrase there"
            )
        return lines[0]
    value = os.environ.get(_PASSPHRASE_ENV)
    return value.encode() if value else None


def _private_keys(args: argparse.Namespace) -> PrivateKeys:
    """The keys of ``--key``; a public key file there is bad input, whatever its mode."""
    from usreview.envelope import KeyFileError, load_private_keys, load_public_keys

    try:
        return load_private_keys(args.key, _passphrase(args))
    except KeyFileError:
        with contextlib.suppress(KeyFileError, OSError):  # not a public key: its own error
            load_public_keys(args.key)
            raise InputError(
                f"{args.key} is a public key; --key takes your private key file "
                "(NAME.key, mode 0600)"
            ) from None
        raise


def _passphrase_file() -> Arg:
    return arg(
        "--passphrase-file",
        type=Path,
        metavar="FILE",
        help=f"read the key's passphrase from FILE's first line (default: ${_PASSPHRASE_ENV})",
    )


def _in_out(what_in: str, what_out: str) -> tuple[Arg, Arg]:
    return (
        arg("input", type=Path, metavar="IN", help=what_in),
        arg("output", type=Path, metavar="OUT", help=f"{what_out} (a new file: never overwritten)"),
    )


def _cmd_keys_new(args: argparse.Namespace) -> int:
    from usreview.envelope import KeyFileError, generate_keys, write_key_pair

    try:
        keys = generate_keys(args.name)
    except KeyFileError as exc:  # the name typed: bad input
        raise InputError(str(exc)) from None
    passphrase = _passphrase(args)
    key_path = write_key_pair(keys, args.dir, passphrase)
    protection = "passphrase-protected" if passphrase else "not passphrase-protected"
    print(f"key id {keys.key_id.hex()}")
    print(f"wrote {key_path} (private, mode 0600, {protection}) and {key_path.with_suffix('.pub')}")
    return 0


_KEYS_NEW = Command(
    "new",
    help="create DIR/NAME.key (private, mode 0600) and DIR/NAME.pub",
    handler=_cmd_keys_new,
    description="Create an identity: an X25519 key to receive and an Ed25519 key to "
    f"sign. The private file is passphrase-protected when ${_PASSPHRASE_ENV} or "
    "--passphrase-file gives a passphrase. Existing files are never overwritten.",
    args=(
        arg("name", metavar="NAME", help="key name: letters, digits, '.', '_', '-'"),
        arg("--dir", type=Path, default=Path("."), help="output folder (default: .)"),
        _passphrase_file(),
    ),
)


def _cmd_keys_trust(args: argparse.Namespace) -> int:
    from usreview.envelope import KeyRing, KeyState, load_public_keys

    ring = KeyRing.load(args.keyring) if args.keyring.exists() else KeyRing()
    key = load_public_keys(args.pub)
    ring.add(key, KeyState(args.state))
    ring.save(args.keyring)
    print(f"{args.keyring}: {key.name} {key.key_id.hex()} {args.state}")
    return 0


_KEYS_TRUST = Command(
    "trust",
    help="add a public key to a key ring file, or change its state",
    handler=_cmd_keys_trust,
    description="Active keys seal and open; retired keys only open; revoked keys are refused.",
    args=(
        arg("pub", type=Path, metavar="PUB", help="a .pub file"),
        arg("--keyring", type=Path, required=True, metavar="FILE", help="key ring (JSON)"),
        arg(
            "--state",
            choices=["active", "retired", "revoked"],
            default="active",
            help="the key's state in the ring (default active; not a hub's --state DIR)",
        ),
    ),
)


def _validity(text: str) -> int:
    """An argument type: a :func:`~usreview.cli.spec.duration` of at most 90 days."""
    from usreview.envelope.seal import MAX_VALIDITY

    seconds = duration(text)
    if seconds > MAX_VALIDITY:
        raise argparse.ArgumentTypeError(
            f"{text!r} is longer than an envelope may be valid (at most 90d)"
        )
    return seconds


_KEYS = Command(
    "keys",
    help="create identity keys and manage a key ring",
    description="Identity keys (X25519 to open envelopes, Ed25519 to sign them) and the key "
    "rings that say which public keys are active, retired or revoked.",
    actions=(_KEYS_NEW, _KEYS_TRUST),
)


def _cmd_seal(args: argparse.Namespace) -> int:
    from usreview.envelope import KeyRing, load_public_keys, seal_file

    sender = _private_keys(args)
    recipients = [load_public_keys(path) for path in args.to]
    try:
        info = seal_file(
            args.input,
            args.output,
            sender=sender,
            recipients=recipients,
            keyring=KeyRing.from_files(args.keyring, ()) if args.keyring else None,
            valid_for=args.valid_for,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    print(
        f"sealed message {info.message_id.hex()} for {len(recipients)} recipient(s), "
        f"valid until {info.expires}"
    )
    return 0


_SEAL = Command(
    "seal",
    help="encrypt a file for one or more recipients and sign it",
    handler=_cmd_seal,
    description="Seal IN into the new file OUT (written atomically, never overwritten).",
    args=(
        arg("--key", type=Path, required=True, metavar="SENDER.key", help="your private key"),
        arg(
            "--to",
            type=Path,
            action="append",
            required=True,
            metavar="RECIPIENT.pub",
            help="repeatable",
        ),
        arg(
            "--keyring",
            type=Path,
            metavar="FILE",
            help="refuse recipients it marks retired or revoked",
        ),
        arg(
            "--valid-for",
            type=_validity,
            default=7 * 86400,
            metavar="DURATION",
            help="validity window, e.g. 3600, 90m, 12h, 7d (default: 7d, at most 90d)",
        ),
        _passphrase_file(),
        *_in_out("the file to seal (a DICOM instance, say)", "the envelope"),
    ),
)


def _cmd_unseal(args: argparse.Namespace) -> int:
    from usreview.envelope import KeyRing, ReplayCache, unseal_file

    if args.keyring is None and not args.trust:
        raise InputError(
            "unseal needs the sender's public key: --trust SENDER.pub or --keyring FILE"
        )
    recipient = _private_keys(args)
    ring = KeyRing.from_files(args.keyring, args.trust or ())
    try:
        cache = ReplayCache(args.replay_cache) if args.replay_cache is not None else None
        info = unseal_file(
            args.input, args.output, recipient=recipient, keyring=ring, replay_cache=cache
        )
    except sqlite3.Error as exc:  # nothing was written: the message is recorded first
        raise InputError(
            f"--replay-cache {args.replay_cache}: not a replay cache this can use ({exc})"
        ) from None
    sender = ring.get(info.sender_id)
    name = sender.public.name if sender is not None else "?"
    print(f"opened message {info.message_id.hex()} from {name} ({info.sender_id.hex()[:16]})")
    return 0


_UNSEAL = Command(
    "unseal",
    help="verify and decrypt an envelope",
    handler=_cmd_unseal,
    description="Open IN into the new file OUT. OUT appears only when the whole envelope "
    "verifies; on any failure one line names the cause and no OUT is left behind.",
    args=(
        arg("--key", type=Path, required=True, metavar="RECIPIENT.key", help="your private key"),
        arg(
            "--trust",
            type=Path,
            action="append",
            metavar="SENDER.pub",
            help="a trusted sender's public key (repeatable)",
        ),
        arg(
            "--keyring",
            type=Path,
            metavar="FILE",
            help="trusted keys with states (see: keys trust)",
        ),
        arg(
            "--replay-cache",
            type=Path,
            metavar="FILE",
            help="SQLite file of opened message ids; refuses an envelope opened before",
        ),
        _passphrase_file(),
        *_in_out("the envelope to open", "the file it holds"),
    ),
)


COMMANDS = (_KEYS, _SEAL, _UNSEAL)
