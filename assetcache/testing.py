"""A pytest plugin: test a pipeline that uses Runware offline, against the bundled emulator.

Installed with assetcache and registered through the ``pytest11`` entry point,
so a project's tests only name the fixtures::

    def test_thumbnail_pipeline(asset_cache, runware_emulator, tmp_path):
        photo = tmp_path / "cat.png"
        photo.write_bytes(PNG_BYTES)
        first = asset_cache.resolve(photo)          # uploaded once
        assert runware_emulator.holds(first.uuid)
        assert asset_cache.resolve(photo).uuid == first.uuid
        assert runware_emulator.upload_count == 1   # the second call was a cache hit
        runware_emulator.advance(days=31)           # Runware deletes it 30 days after last use
        assert asset_cache.resolve(photo).uuid != first.uuid

Fixtures
--------
``runware_emulator``
    A running :class:`assetcache.emulator.Emulator` on 127.0.0.1 (a free port),
    REST at ``.base_url`` and WebSocket at ``.ws_url``, with a frozen clock
    that moves only with ``.advance(days=...)``; ``.delete(uuid)`` makes
    Runware forget an image; ``.upload_count``, ``.inference_count``,
    ``.stats()`` count what reached it. Any non-empty API key is accepted
    (:data:`API_KEY` is the one ``asset_cache`` uses). Stopped after the test.
``asset_cache``
    An :class:`assetcache.AssetCache` bound to that emulator and its clock,
    with its database in the test's ``tmp_path``. Closed after the test.
``runware_emulator_options``
    The keyword arguments the emulator is built with; override it in a
    ``conftest.py`` to change them (``{"media_placeholder": 1}``,
    ``{"fault_rate": 0.2, "seed": 1}``, ...).

Nothing is imported from assetcache until a fixture is used, so the plugin
costs nothing in a test session that does not use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._client import AssetCache
    from .emulator import Emulator

__all__ = ["API_KEY", "asset_cache", "runware_emulator", "runware_emulator_options"]

#: The API key the ``asset_cache`` fixture presents (the emulator accepts any).
API_KEY = "assetcache-testing-key"


@pytest.fixture
def runware_emulator_options() -> dict[str, Any]:
    """Keyword arguments for the emulator; override to change them."""
    return {}


@pytest.fixture
def runware_emulator(runware_emulator_options: dict[str, Any]) -> Iterator[Emulator]:
    """A running Runware emulator (REST and WebSocket) with a frozen clock."""
    import time

    from .emulator import Emulator

    options: dict[str, Any] = {"api_key": None, "start_time": time.time(), "frozen": True}
    options.update(runware_emulator_options)
    with Emulator(**options) as emulator:
        yield emulator


@pytest.fixture
def asset_cache(runware_emulator: Emulator, tmp_path: Path) -> Iterator[AssetCache]:
    """An AssetCache on the emulator, sharing its clock; database under ``tmp_path``."""
    from ._client import AssetCache
    from ._config import RetryPolicy

    cache = AssetCache(
        API_KEY,
        base_url=runware_emulator.base_url,
        db_path=tmp_path / "assetcache.db",
        clock=runware_emulator.clock,
        # The emulator answers at once: retry quickly instead of backing off for seconds.
        retry=RetryPolicy(attempts=6, base_delay=0.001, max_delay=0.01, timeout=30.0),
    )
    try:
        yield cache
    finally:
        cache.close()
