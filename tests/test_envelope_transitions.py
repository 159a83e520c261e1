"""Key transitions (``usreview.envelope.transitions``) and opening with several keys."""

from __future__ import annotations

import base64
import io
import itertools

import pytest

from usreview.envelope import (
    KeyRing,
    KeyTransition,
    KeyTransitionError,
    NotARecipientError,
    PrivateKeys,
    PublicKeys,
    follow_transitions,
    generate_keys,
    seal,
    sign_transition,
    trusted_keys,
    unseal,
)


def _chain(n: int) -> tuple[list[PrivateKeys], list[KeyTransition]]:
    keys = [generate_keys("hub") for _ in range(n)]
    steps = [sign_transition(a, b) for a, b in itertools.pairwise(keys)]
    return keys, steps


def test_a_pinned_key_follows_the_whole_chain_in_order() -> None:
    keys, steps = _chain(4)
    wire = [step.to_dict() for step in steps]
    reached = follow_transitions([keys[0].public], wire)
    assert [k.key_id for k in reached] == [k.key_id for k in keys[1:]]
    # a site pinned at a later key ignores the earlier steps and reaches the same end
    later = follow_transitions([keys[2].public], wire)
    assert [k.key_id for k in later] == [keys[3].key_id]
    # nothing new for a site that already has the last key
    assert follow_transitions([keys[3].public], wire) == []


def test_steps_from_keys_nobody_trusts_are_ignored() -> None:
    _, steps = _chain(2)
    stranger = generate_keys("hub")
    assert follow_transitions([stranger.public], [s.to_dict() for s in steps]) == []


@pytest.mark.parametrize("field", ["key", "at", "previous_key_id", "signature", "proof"])
def test_an_altered_step_refuses_the_chain(field: str) -> None:
    keys, steps = _chain(3)
    wire = [step.to_dict() for step in steps]
    other = generate_keys("hub")
    if field == "key":
        wire[0]["key"] = other.public.to_text()
    elif field == "at":
        wire[0]["at"] = "2030-01-01T00:00:00+00:00"
    elif field == "previous_key_id":  # a step that names a trusted key it was not signed by
        wire[1]["previous_key_id"] = keys[0].key_id.hex()
    else:
        raw = bytearray(base64.b64decode(wire[0][field]))
        raw[0] ^= 1
        wire[0][field] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(KeyTransitionError, match="does not verify"):
        follow_transitions([keys[0].public], wire)


def test_a_step_signed_by_the_old_key_alone_is_refused() -> None:
    """Without the new key's proof, a holder of the old key could hand over to any key."""
    old, new = generate_keys("hub"), generate_keys("hub")
    step = sign_transition(old, new)
    forged = KeyTransition(step.previous_key_id, generate_keys("hub").public, step.at,
                           step.signature, step.proof)  # fmt: skip
    with pytest.raises(KeyTransitionError, match="does not verify"):
        follow_transitions([old.public], [forged])


def _ids(keys: list[PublicKeys]) -> list[bytes]:
    return [k.key_id for k in keys]


def test_a_revoking_step_ends_the_trust_of_every_earlier_key() -> None:
    keys = [generate_keys("hub") for _ in range(4)]
    steps = [
        sign_transition(keys[0], keys[1]),
        sign_transition(keys[1], keys[2], revokes=True),  # keys[1] believed stolen
        sign_transition(keys[2], keys[3]),
    ]
    wire = [step.to_dict() for step in steps]
    assert "revokes" not in wire[0] and wire[1]["revokes"] is True
    assert _ids(trusted_keys([keys[0].public], wire)) == _ids([keys[2].public, keys[3].public])
    assert _ids(follow_transitions([keys[0].public], wire)) == _ids(
        [keys[2].public, keys[3].public]
    )
    # A site that already trusted the revoked keys drops them too.
    trusted = trusted_keys([keys[0].public, keys[1].public], wire)
    assert _ids(trusted) == _ids([keys[2].public, keys[3].public])
    # A thief's rival step from a revoked key, listed after the revocation: not followed.
    thief = generate_keys("hub")
    rival = sign_transition(keys[1], thief).to_dict()
    assert thief.key_id not in _ids(trusted_keys([keys[0].public], [*wire, rival]))
    # Without revocation every key stays trusted (as before).
    plain = [sign_transition(a, b).to_dict() for a, b in itertools.pairwise(keys)]
    assert _ids(trusted_keys([keys[0].public], plain)) == _ids([k.public for k in keys])


@pytest.mark.parametrize("change", ["dropped", "added"])
def test_revocation_is_signed_with_the_step(change: str) -> None:
    """Neither can a man in the middle strip a revocation, nor add one to a routine step."""
    old, new = generate_keys("hub"), generate_keys("hub")
    wire = sign_transition(old, new, revokes=change == "dropped").to_dict()
    if change == "dropped":
        del wire["revokes"]
    else:
        wire["revokes"] = True
    with pytest.raises(KeyTransitionError, match="does not verify"):
        trusted_keys([old.public], [wire])
    wire["revokes"] = "yes"
    with pytest.raises(KeyTransitionError, match="revokes is not true or false"):
        trusted_keys([old.public], [wire])


def test_a_transition_keeps_the_identity() -> None:
    with pytest.raises(KeyTransitionError, match="one identity"):
        sign_transition(generate_keys("hub"), generate_keys("site-a"))


@pytest.mark.parametrize(
    "wire",
    [
        {},
        {"type": "usreview-key-transition", "version": 2},
        {"type": "usreview-key-transition", "version": 1, "previous_key_id": "zz"},
        "not a mapping",
    ],
)
def test_malformed_transitions_are_typed_errors(wire: object) -> None:
    with pytest.raises(KeyTransitionError):
        KeyTransition.from_dict(wire)  # type: ignore[arg-type]


def test_opening_with_the_current_and_earlier_keys() -> None:
    site = generate_keys("site-a")
    old, new = generate_keys("hub"), generate_keys("hub")
    ring = KeyRing([site.public])
    for addressed in (old, new):
        sealed = io.BytesIO()
        seal(io.BytesIO(b"payload"), sealed, sender=site, recipients=[addressed.public])
        out = io.BytesIO()
        unseal(io.BytesIO(sealed.getvalue()), out, recipient=[new, old], keyring=ring)
        assert out.getvalue() == b"payload"
    stranger = generate_keys("hub")
    with pytest.raises(NotARecipientError, match=r"nor to 1 earlier key"):
        unseal(io.BytesIO(sealed.getvalue()), io.BytesIO(), recipient=[stranger, old],
               keyring=ring)  # fmt: skip
