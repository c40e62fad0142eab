"""Lifecycle operations: record outside uses, invalidate, heal, renew, delete remotely.

A mixin of :class:`~assetcache.AssetCache` and its async twin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._cache import _Engine


class LifecycleMixin:
    _engine: _Engine
