"""What the builder's scale curves showed growing too fast, pinned by counting calls (no timing):
see bench/builder_scale.py."""

from __future__ import annotations

from builder.resolving import ResolveCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plugins_of_one_source_share_a_fetch() -> None:
    clock = Clock()
    cache = ResolveCache(max_age=270.0, share_seconds=5.0, clock=clock)
    fetches: list[str] = []

    def fetch() -> str:
        fetches.append("x")
        return "c1"

    source = ("tenant", "https://git.test/mono.git", "main", None, None)
    for i in range(1000):
        assert cache.resolve(f"tenant/p{i}", 1, source, fetch) == "c1"
    assert len(fetches) == 1, "one fetch per source in a sweep, not one per plugin"

    other = ("other-tenant", "https://git.test/mono.git", "main", None, None)
    cache.resolve("other-tenant/p0", 1, other, fetch)
    assert len(fetches) == 2, "another tenant's mirror and credentials: its own fetch"


def test_spec_change_fetches_and_shared_results_age_out() -> None:
    clock = Clock()
    cache = ResolveCache(max_age=270.0, share_seconds=5.0, clock=clock)
    tips = iter(["c1", "c2", "c3", "c4"])
    fetches: list[str] = []

    def fetch() -> str:
        fetches.append("x")
        return next(tips)

    source = ("t", "https://git.test/r.git", "main", None, None)
    assert cache.resolve("t/a", 1, source, fetch) == "c1"
    assert cache.resolve("t/a", 1, source, fetch) == "c1"
    assert cache.resolve("t/a", 2, source, fetch) == "c2", "a new generation fetches"
    clock.now += 6  # past share_seconds: a new plugin sees a fresh tip, not one 6 s old
    assert cache.resolve("t/b", 1, source, fetch) == "c3"
    assert cache.resolve("t/a", 2, source, fetch) == "c2", "its own result is kept a period"
    clock.now += 270
    assert cache.resolve("t/a", 2, source, fetch) == "c4"
    assert cache.resolve("t/b", 1, source, fetch) == "c4", "shares the fresher result"
    assert len(fetches) == 4
