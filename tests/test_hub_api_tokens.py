"""The service's short-lived cache of the hub's answers about tokens (no hub needed)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from usreview.hub.service import TOKEN_CACHE_SECONDS, TokenCache

SITE = {"name": "sitea", "kind": "user", "groups": ["sites"], "scopes": ["custom:x"]}


class FakeHub:
    """Answers like ``HubAuth.user_for_token(token, use_cache=False, sync=False)``."""

    def __init__(self) -> None:
        self.known: dict[str, dict[str, Any]] = {"good": SITE}
        self.asked: list[str] = []
        self.delay = 0.0
        self.fail = False

    async def user_for_token(
        self, token: str, use_cache: bool = True, sync: bool = True
    ) -> dict[str, Any] | None:
        assert use_cache is False and sync is False  # never JupyterHub's own 5-min cache
        self.asked.append(token)
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("the hub is down")
        return self.known.get(token)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_known_token_is_asked_once_per_ttl_and_revocation_takes_effect() -> None:
    hub, clock = FakeHub(), Clock()
    cache = TokenCache(clock=clock)
    assert TOKEN_CACHE_SECONDS <= 10  # seconds, not JupyterHub's default 5 minutes

    async def scenario() -> None:
        first = await cache.lookup(hub, "good")
        assert first == SITE
        first["groups"].append("admins")  # a handler changing its copy changes nothing
        clock.now += TOKEN_CACHE_SECONDS - 0.1
        assert await cache.lookup(hub, "good") == SITE
        assert hub.asked == ["good"]
        del hub.known["good"]  # revoked at the hub
        clock.now += 0.2  # the answer has expired: the hub is asked again and refuses
        assert await cache.lookup(hub, "good") is None
        assert await cache.lookup(hub, "good") is None  # the refusal is kept too
        assert hub.asked == ["good"] * 2
        clock.now += TOKEN_CACHE_SECONDS  # and asked again after as long
        assert await cache.lookup(hub, "good") is None
        assert hub.asked == ["good"] * 3

    asyncio.run(scenario())


def test_unknown_tokens_are_kept_failures_are_not() -> None:
    hub = FakeHub()
    cache = TokenCache()

    async def scenario() -> None:
        for _ in range(100):  # a wrong token in a loop: the hub is asked once
            assert await cache.lookup(hub, "nobody") is None
        assert hub.asked == ["nobody"] and len(cache) == 1
        cache.forget("nobody")
        hub.fail = True
        with pytest.raises(RuntimeError, match="down"):
            await cache.lookup(hub, "good")
        hub.fail = False
        assert await cache.lookup(hub, "good") == SITE
        assert hub.asked == ["nobody", "good", "good"] and len(cache) == 1
        cache.forget("good")
        assert len(cache) == 0

    asyncio.run(scenario())


def test_concurrent_lookups_of_one_token_ask_the_hub_once() -> None:
    hub = FakeHub()
    hub.delay = 0.05
    cache = TokenCache()

    async def scenario() -> None:
        answers = await asyncio.gather(*(cache.lookup(hub, "good") for _ in range(10)))
        assert answers == [SITE] * 10
        assert hub.asked == ["good"] and cache.misses == 1
        hub.fail = True  # a failed lookup: those waiting for it ask again themselves
        cache.forget()
        results = await asyncio.gather(
            *(cache.lookup(hub, "good") for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results)

    asyncio.run(scenario())


def test_ttl_zero_keeps_nothing_and_the_cache_is_bounded() -> None:
    hub, clock = FakeHub(), Clock()
    hub.known = {f"t{n}": dict(SITE, name=f"s{n}") for n in range(5)}

    async def scenario() -> None:
        nothing = TokenCache(0, clock=clock)
        await nothing.lookup(hub, "t0")
        await nothing.lookup(hub, "t0")
        assert len(nothing) == 0 and nothing.misses == 2
        small = TokenCache(clock=clock, max_entries=3)
        for n in range(5):
            await small.lookup(hub, f"t{n}")
        assert len(small) == 3
        assert (await small.lookup(hub, "t4") or {})["name"] == "s4"
        assert small.misses == 5  # the newest are kept

    asyncio.run(scenario())
    with pytest.raises(ValueError, match="ttl"):
        TokenCache(-1)


def test_an_expiry_in_the_model_is_honoured_exactly() -> None:
    from datetime import UTC, datetime

    hub, clock, wall = FakeHub(), Clock(), Clock()
    wall.now = 1_800_000_000.0
    expiry = datetime.fromtimestamp(wall.now + 2.0, UTC).isoformat().replace("+00:00", "Z")
    hub.known = {
        "expiring": dict(SITE, expires_at=expiry),
        "forever": dict(SITE, expires_at=None),
        "garbled": dict(SITE, expires_at="soon"),
    }
    cache = TokenCache(clock=clock, wall_clock=wall)

    async def scenario() -> None:
        for token in ("expiring", "forever", "garbled"):
            assert (await cache.lookup(hub, token) or {})["name"] == "sitea"
        assert len(cache) == 2  # an expiry it cannot read: used once, not kept
        clock.now += 1.9
        wall.now += 1.9
        assert await cache.lookup(hub, "expiring") is not None
        clock.now += 0.2  # past its expiry, well within the cache's 5 s
        wall.now += 0.2
        assert await cache.lookup(hub, "forever") is not None
        assert hub.asked.count("expiring") == 1 and hub.asked.count("forever") == 1
        # The hub (whose clock may lag) still answers with the model: refused here anyway.
        assert await cache.lookup(hub, "expiring") is None
        assert await cache.lookup(hub, "expiring") is None
        assert hub.asked.count("expiring") == 2

    asyncio.run(scenario())
