"""The hub's envelope keys: the current one, the ones it replaced, and their transitions.

==================================  ==========================================================
``hub.key`` / ``hub.pub``           the current key: sites seal uploads to it, receipts and
                                    results are signed with it
``hub-keys/KEYID.key`` / ``.pub``   every key the hub has had (``KEYID``: 16 hex digits of its
                                    key id), kept for good: the archive's envelopes sealed to
                                    an earlier key open only with it
``hub-keys/transitions.json``       the signed transitions (:mod:`usreview.envelope.transitions`),
                                    oldest first
==================================  ==========================================================

The same answer (``GET /hub-keys``) announces the TLS certificate the hub will serve next
(``tls-next.crt``), signed with the current key: sites that follow results fetch it every
few hours and trust it beside the certificate they pinned, so the hub can switch to it
(:func:`usreview.hub.tls.ensure_certificate` does so a week before the current one
expires) without a new file handed to every site.

``usreview hub rotate-key`` (:func:`rotate_hub_key`, the hub running or not) makes a new
current key. The hub's processes hold the keys in a :class:`LiveHubKeys`, which reads them
again once ``hub.key`` is replaced: each service process at its next request, the
processing worker at its next job. Everything the hub opens (uploads, stored instances for
review, processing, conflicts, orphans) opens with any of its keys, so uploads a site
sealed to the previous key before it heard of the new one are still taken. Sites adopt the
new key on their own: the first receipt or result signed by it sends them to
``GET /hub-keys``, and they follow the transitions from the key they pinned (each signed by
the previous key and by the new one), without a new ``hub.pub`` to hand over.

``rotate-key --revoke`` is for a key believed stolen: its transition *revokes*, and a site
that follows it stops trusting every earlier hub key (a receipt or result signed by one is
refused; a thief's rival transition from one is not followed). The hub still opens with
them (its archive), and hands out every result signed by a revoked key sealed again with the
current one (:func:`usreview.hub.api.publish.open_fresh_result`). Uploads a site sealed to a
revoked key before it heard are still taken: what a thief could read of them was sent
already, and the receipt, signed by the new key, makes the site switch.

Each step of a rotation is durable before the next: both keys are written to
``hub-keys/`` first, then the transition, then ``hub.key`` and ``hub.pub`` are replaced.
A rotation cut short leaves either the previous key current (run it again) or
``hub.pub`` behind ``hub.key``, which :func:`load_hub_keys` rewrites. Replacing ``hub.key``
is the switch a running hub sees: the transition to the new key is on disk before it.
A rotation runs alone (:func:`keys_lock`, ``hub-keys.lock``): two at once would each add a
step from the same key, and a backup could copy a new ``hub.key`` without its transition.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from usreview.envelope import (
    HUB_CERTIFICATE,
    KeyTransition,
    PrivateKeys,
    generate_keys,
    load_private_keys,
    read_transitions,
    sign_announcement,
    sign_transition,
    write_transitions,
)
from usreview.envelope.atomic import replace_file, write_new_file
from usreview.envelope.errors import EnvelopeError
from usreview.hub.errors import StateError
from usreview.hub.state import HubState

__all__ = ["HubKeys", "LiveHubKeys", "keys_lock", "load_hub_keys", "rotate_hub_key"]

_FOLDER = "hub-keys"
_TRANSITIONS = "transitions.json"
_LOCK = "hub-keys.lock"
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubKeys:
    """The hub's current key, the ones it replaced (newest first), and the transitions."""

    current: PrivateKeys
    previous: tuple[PrivateKeys, ...] = ()
    transitions: tuple[KeyTransition, ...] = ()

    @property
    def opening(self) -> tuple[PrivateKeys, ...]:
        """Every key an envelope addressed to the hub may be sealed to, current first."""
        return (self.current, *self.previous)

    @property
    def revoked(self) -> frozenset[bytes]:
        """Key ids of the keys the sites no longer trust: every key before the last
        transition that revokes (none without one)."""
        last = max((n for n, step in enumerate(self.transitions) if step.revokes), default=None)
        if last is None:
            return frozenset()
        kept = {step.key.key_id for step in self.transitions[last:]} | {self.current.key_id}
        return frozenset(k.key_id for k in self.opening if k.key_id not in kept)

    def to_dict(self, next_certificate: str | None = None) -> dict[str, object]:
        """What ``GET /hub-keys`` answers: the current public key, the transitions, and
        the TLS certificate the hub serves next (PEM), signed with the current key."""
        return {
            "key_id": self.current.key_id.hex(),
            "key": self.current.public.to_text(),
            "transitions": [step.to_dict() for step in self.transitions],
            "next_certificate": (
                None
                if next_certificate is None
                else sign_announcement(self.current, HUB_CERTIFICATE, next_certificate)
            ),
        }


def _folder(state: HubState) -> Path:
    return state.root / _FOLDER


def _stem(keys: PrivateKeys) -> str:
    return keys.key_id.hex()[:16]


def load_hub_keys(state: HubState) -> HubKeys:
    """Read the hub's keys from its state directory.

    Raises
    ------
    StateError
        A key file or the transitions cannot be read, or a transition does not verify.
    """
    try:
        current = load_private_keys(state.hub_key)
        folder = _folder(state)
        stored = {
            keys.key_id: keys
            for path in sorted(folder.glob("*.key"))
            if (keys := load_private_keys(path)).key_id != current.key_id
        }
        transitions = read_transitions(folder / _TRANSITIONS)
    except (OSError, EnvelopeError) as exc:
        raise StateError(f"the hub's keys cannot be read: {exc}") from None
    # Newest first: the order of the transitions, then any other (a rotation cut short).
    order = [step.previous_key_id for step in reversed(transitions)]
    previous = [stored.pop(key_id) for key_id in dict.fromkeys(order) if key_id in stored]
    previous += stored.values()
    _repair_public(state, current)
    return HubKeys(current, tuple(previous), tuple(transitions))


class LiveHubKeys:
    """The hub's keys as its state directory holds them now (thread-safe).

    :meth:`get` reads them again when ``hub.key`` was replaced since (a rotation of the
    running hub): one ``stat`` a call otherwise. Keys that cannot be read then are not
    taken: the ones held stay in use (logged), and the next call tries again.

    Raises
    ------
    StateError
        At construction: the keys cannot be read.
    """

    def __init__(self, state: HubState) -> None:
        self._state = state
        self._lock = threading.Lock()
        self._stamp = _stamp(state.hub_key)
        self._keys = load_hub_keys(state)

    def get(self) -> HubKeys:
        """The current keys, read again if ``hub.key`` changed."""
        stamp = _stamp(self._state.hub_key)
        if stamp == self._stamp:
            return self._keys
        with self._lock:
            if stamp != self._stamp:
                try:
                    keys = load_hub_keys(self._state)
                except (StateError, OSError) as exc:  # OSError: rewriting hub.pub
                    _log.warning("the hub's new keys are not taken yet: %s", exc)
                    return self._keys
                if keys.current.key_id != self._keys.current.key_id:
                    _log.info("hub key %s is current", keys.current.key_id.hex()[:16])
                self._keys, self._stamp = keys, stamp
            return self._keys


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when ``path`` is replaced (``None``: missing)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


@contextlib.contextmanager
def keys_lock(state: HubState, *, wait: bool = True) -> Iterator[None]:
    """Hold the hub keys' lock: a rotation, or a backup copying the keys, runs alone.

    Raises
    ------
    StateError
        The lock file cannot be opened, or (``wait=False``) another process holds it.
    """
    try:
        fd = os.open(state.root / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StateError(f"the hub's keys cannot be locked: {exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise StateError(
                f"a key rotation or a backup of {state.root} is running: try again once it "
                "has ended"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _repair_public(state: HubState, current: PrivateKeys) -> None:
    """Rewrite ``hub.pub`` if it is not ``hub.key``'s (a rotation cut between the two)."""
    text = current.public.to_text()
    try:
        if state.hub_pub.read_text() == text:
            return
    except FileNotFoundError:
        pass
    replace_file(state.hub_pub, text.encode(), mode=0o644)


def rotate_hub_key(
    state: HubState, now: Callable[[], datetime] | None = None, *, revoke: bool = False
) -> tuple[HubKeys, KeyTransition]:
    """Make a new current hub key; the replaced one keeps opening what was sealed to it.
    With ``revoke``, the sites stop trusting every earlier key (see the module docstring).

    A running hub takes the new key at its next request or job (:class:`LiveHubKeys`).

    Raises
    ------
    StateError
        The keys cannot be read or written, or another rotation or a backup is running.
    """
    with keys_lock(state, wait=False):
        return _rotate(state, now, revoke)


def _rotate(
    state: HubState, now: Callable[[], datetime] | None, revoke: bool
) -> tuple[HubKeys, KeyTransition]:
    keys = load_hub_keys(state)
    new = generate_keys(keys.current.name)
    step = sign_transition(keys.current, new, now() if now else None, revokes=revoke)
    folder = _folder(state)
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        for pair in (keys.current, new):
            for suffix, text, mode in (
                (".key", pair.to_text(), 0o600),
                (".pub", pair.public.to_text(), 0o644),
            ):
                path = folder / f"{_stem(pair)}{suffix}"
                if not path.exists():
                    write_new_file(path, text.encode(), mode=mode)
        steps = [*keys.transitions, step]
        write_transitions(folder / _TRANSITIONS, steps, mode=0o644)
        replace_file(state.hub_key, new.to_text().encode(), mode=0o600)
        replace_file(state.hub_pub, new.public.to_text().encode(), mode=0o644)
    except OSError as exc:
        raise StateError(f"the hub's key could not be rotated: {exc}") from None
    return HubKeys(new, keys.opening, tuple(steps)), step
