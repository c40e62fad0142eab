"""The local Runware proxy: any client gets the cache by pointing its API URL here."""

from ._server import DEFAULT_PORT, Proxy

__all__ = ["DEFAULT_PORT", "Proxy"]
