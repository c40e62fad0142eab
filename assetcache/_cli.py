"""The ``assetcache`` command: a thin layer over the Python API.

Each command opens the cache through :class:`Settings` on ``ctx.obj``, calls
the library, and turns library errors into one line on stderr with a useful
exit code: 0 all good, 1 some items failed, 2 usage or configuration error.
Heavy imports (httpx, the cache) happen inside commands, so ``--version`` and
``--help`` start fast.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ._version import __version__

#: The key the in-process emulator accepts; it guards nothing real.
EMULATOR_KEY = "assetcache-emulator"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(click.ClickException):
    """A configuration or usage problem: exit code 2."""

    exit_code = EXIT_USAGE


@dataclass
class Settings:
    """Global options, and the cache they open (lazily, once)."""

    db: str | None = None
    api_url: str | None = None
    emulator: bool = False
    api_key_file: str | None = None
    verbose: int = 0
    _cache: Any = None
    _emulator: Any = None
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def db_path(self) -> Path:
        from ._store import default_db_path

        return Path(self.db).expanduser() if self.db else default_db_path()

    def api_key(self) -> str | None:
        if self.api_key_file:
            try:
                key = Path(self.api_key_file).expanduser().read_text().strip()
            except OSError as exc:
                raise UsageError(f"cannot read --api-key-file {self.api_key_file}: {exc.strerror}") from None
            if not key:
                raise UsageError(f"--api-key-file {self.api_key_file} is empty")
            return key
        return os.environ.get("RUNWARE_API_KEY") or None

    def cache(self, *, need_key: bool = True, **kwargs: Any) -> Any:
        """The :class:`AssetCache` for this invocation."""
        if self._cache is not None:
            return self._cache
        from ._cache import AssetCache

        db_path = self.db_path()
        if self.emulator:
            from .emulator import Emulator

            emu = Emulator(
                api_key=EMULATOR_KEY, state_path=str(db_path) + ".emulator.json"
            )
            emu.start()
            self._emulator = emu
            self._closers.append(emu.stop)
            # The emulator's clock is persisted (it may have been advanced): share it.
            kwargs.setdefault("clock", emu.clock)
            key, url, namespace = EMULATOR_KEY, emu.base_url, "emulator#local"
        else:
            key, url, namespace = self.api_key(), self.api_url, None
            if need_key and not key:
                raise UsageError(
                    "no Runware API key: set RUNWARE_API_KEY (or --api-key-file FILE), "
                    "or add --emulator to use the bundled local emulator"
                )
        self._cache = AssetCache(key, base_url=url, db_path=db_path, namespace=namespace, **kwargs)
        self._closers.insert(0, self._cache.close)
        return self._cache

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one-line messages and exit codes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ._errors import AssetCacheError, ConfigurationError, StoreError

        try:
            return fn(*args, **kwargs)
        except (ConfigurationError, StoreError) as exc:
            raise UsageError(str(exc)) from None
        except AssetCacheError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def iter_inputs(paths: tuple[str, ...], pattern: str | None = None) -> Iterator[str]:
    """Named files as given; directories walked (sorted) for image files or ``pattern``."""
    import fnmatch

    for raw in paths:
        if os.path.isdir(raw):
            for root, dirs, files in os.walk(raw):
                dirs.sort()
                for name in sorted(files):
                    if pattern is not None:
                        if fnmatch.fnmatch(name, pattern):
                            yield os.path.join(root, name)
                    elif os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                        yield os.path.join(root, name)
        else:
            yield raw


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", metavar="PATH", envvar="ASSETCACHE_DB",
              help="Cache database (default: the user cache folder; env ASSETCACHE_DB).")
@click.option("--api-url", metavar="URL", envvar="ASSETCACHE_API_URL",
              help="Runware API endpoint (default https://api.runware.ai/v1; env ASSETCACHE_API_URL).")
@click.option("--emulator", is_flag=True,
              help="Use the bundled local emulator instead of Runware (no account, no network).")
@click.option("--api-key-file", metavar="FILE",
              help="Read the API key from FILE (default: env RUNWARE_API_KEY).")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(__version__, prog_name="assetcache")
@click.pass_context
def cli(ctx: click.Context, db: str | None, api_url: str | None, emulator: bool,
        api_key_file: str | None, verbose: int) -> None:
    """Never upload the same image to Runware twice.

    assetcache maps image content to Runware imageUUIDs, re-uploading only what
    Runware has deleted (30 days after last use).
    """
    if verbose:
        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")
    settings = Settings(db, api_url, emulator, api_key_file, verbose)
    ctx.obj = settings
    ctx.call_on_close(settings.close)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.pass_obj
@handle_errors
def upload(settings: Settings, paths: tuple[str, ...], as_json: bool) -> None:
    """Upload files (directories: their images, recursively); print each imageUUID.

    Content already uploaded and still alive on Runware is not sent again.
    """
    inputs = list(iter_inputs(paths))
    if not inputs:
        raise UsageError("no image files found in the given paths")
    cache = settings.cache()
    results = cache.resolve_many(inputs)
    counts = {"hit": 0, "uploaded": 0, "reuploaded": 0, "failed": 0}
    for res in results:
        counts[res.outcome] += 1
    if as_json:
        echo_json({
            "results": [
                {"source": r.source, "uuid": r.uuid, "outcome": r.outcome,
                 "content_hash": r.content_hash, "error": str(r.error) if r.error else None}
                for r in results
            ],
            "summary": counts,
        })
    else:
        for r in results:
            if r.error is None:
                click.echo(f"{r.source}\t{r.uuid}\t{r.outcome}")
            else:
                click.echo(f"{r.source}\t-\tfailed: {r.error.reason if hasattr(r.error, 'reason') else r.error}")
        click.echo(
            f"{len(results)} file(s): {counts['uploaded']} uploaded, {counts['reuploaded']} re-uploaded, "
            f"{counts['hit']} from cache, {counts['failed']} failed",
            err=True,
        )
    if counts["failed"]:
        sys.exit(EXIT_FAILED)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port (0: any free port).")
@click.option("--state", metavar="FILE", help="Persist the emulator's images and clock in FILE.")
@click.option("--latency", default=0.0, type=float, help="Seconds to wait before each answer.")
@click.option("--fault-rate", default=0.0, type=float, help="Fraction of requests answered with a fault.")
def emulator(host: str, port: int, state: str | None, latency: float, fault_rate: float) -> None:
    """Run the local Runware API emulator until interrupted.

    It accepts the key in RUNWARE_API_KEY when that is set, any key otherwise.
    """
    from .emulator import Emulator

    key = os.environ.get("RUNWARE_API_KEY") or None
    emu = Emulator(api_key=key, host=host, port=port, state_path=state, latency=latency,
                   fault_rate=fault_rate)
    emu.start()
    click.echo(f"listening on {emu.base_url}")
    try:
        emu.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()


def main() -> None:
    cli(prog_name="assetcache")
