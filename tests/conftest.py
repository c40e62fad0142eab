"""Shared fixtures: an emulator on 127.0.0.1, a cache bound to it, a clock."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import API_KEY

from assetcache import AssetCache, RetryPolicy
from assetcache.emulator import Emulator

# The machine's own config files must not leak into tests (nor into the processes
# they start): no user file; a test that wants one names it.
os.environ["ASSETCACHE_CONFIG"] = ""

#: Retries without real waiting: backoff is tested as a pure function.
FAST_RETRY = RetryPolicy(attempts=8, base_delay=0.0005, max_delay=0.002, timeout=10.0)

#: The official SDKs' scenarios run in their own environments (.ci/sdk-envs),
#: driven by tests/test_sdk_envs.py: both SDKs install a package named
#: ``runware``, so they cannot be collected here.
collect_ignore = ["sdk"]


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(api_key=API_KEY) as emulator:
        yield emulator


def on_emulator(emu: Emulator, tmp_path: Path, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Cache settings bound to ``emu`` (its URL and clock), a database in ``tmp_path``
    and fast retries, unless ``kwargs`` say otherwise."""
    return {
        "base_url": emu.base_url,
        "db_path": tmp_path / "cache.db",
        "clock": emu.clock,
        "retry": FAST_RETRY,
        **kwargs,
    }


@pytest.fixture
def make_cache(emu: Emulator, tmp_path: Path) -> Iterator[Callable[..., AssetCache]]:
    """``make_cache(**overrides)``: an AssetCache on the emulator, sharing its clock."""
    opened: list[AssetCache] = []

    def make(**kwargs: Any) -> AssetCache:
        cache = AssetCache(kwargs.pop("api_key", API_KEY), **on_emulator(emu, tmp_path, kwargs))
        opened.append(cache)
        return cache

    yield make
    for cache in opened:
        cache.close()


@pytest.fixture
def cache(make_cache: Callable[..., AssetCache]) -> AssetCache:
    return make_cache()
