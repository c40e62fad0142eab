"""Where the cache keeps what it knows: the only package that holds SQL.

``_base`` declares the rows and the two contracts (file index, registry);
``_sqlite``, ``_postgres`` and ``_fleet`` implement them; ``_repair`` checks
and rebuilds a database file without an open cache. :func:`open_stores` picks
the stores for a database path or URL.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .._errors import ConfigurationError

if TYPE_CHECKING:  # loaded by open_stores: ``status``'s helper imports ``_scan`` alone
    from ._base import Registry
    from ._sqlite import SQLiteStore


def open_stores(
    db: str | os.PathLike[str],
    local_db: str | os.PathLike[str] | None = None,
    *,
    fresh_since: Callable[[], float] | None = None,
    default_dir: str | os.PathLike[str] | None = None,
    shared: bool | None = None,
    folders: Sequence[str] = (),
    host_id: str | None = None,
) -> tuple[SQLiteStore, Registry]:
    """``(file index, registry)`` for a database path or URL.

    A path or ``sqlite:///path`` (``sqlite:////abs/path``) gives one SQLite
    file holding both. ``postgresql://...`` keeps the file index, and a local
    copy of the rows this host uses, in ``local_db`` (default: a file per
    server in ``default_dir``) and the registry on the server;
    ``fresh_since()`` tells the fleet which local rows are provably fresh;
    ``host_id`` (default ``$ASSETCACHE_HOST_ID``, else the host name) names this
    host in the fleet's lease owners.

    The SQLite file (and ``folders``, the default location's) must be this
    user's and writable by no one else, unless ``shared`` says the sharing is
    deliberate (``_sqlite.check_private``).
    """
    from ._sqlite import SQLiteStore

    text = os.fspath(db)
    if isinstance(text, str) and text.startswith(("postgresql://", "postgres://")):
        from ._fleet import FleetRegistry, local_db_for
        from ._postgres import PostgresRegistry

        server = PostgresRegistry(text, host=host_id)
        try:
            local = SQLiteStore(
                local_db_for(text, local_db, default_dir),
                shared=shared,
                folders=folders,
            )
        except BaseException:
            server.close()
            raise
        return local, FleetRegistry(local, server, fresh_since)
    if isinstance(text, str) and text.startswith("sqlite:///"):
        text = text[len("sqlite:///") :] or "."
    elif isinstance(text, str) and "://" in text:
        raise ConfigurationError(
            f"unsupported database URL {text.split('://')[0]}://...: use a path, "
            "sqlite:///path or postgresql://..."
        )
    store = SQLiteStore(text, shared=shared, folders=folders)
    return store, store
