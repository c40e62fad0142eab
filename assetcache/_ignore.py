"""Which files a walk leaves out: ``--exclude GLOB`` and ``.assetcacheignore``.

Both use gitignore syntax (through ``pathspec``): ``*.tmp``, ``drafts/``,
``/top-level-only.png``, ``**/cache/**``, ``!keep-this.png``. Patterns are
matched against a file's path relative to the folder given on the command line
(a pattern without ``/`` matches a name at any depth). The ignore files
themselves are always left out.

An ignore file ``.assetcacheignore`` is read in each folder given and in every
folder above it (the nearest last, so it can re-include with ``!``); its
patterns are relative to its own folder. ``--exclude`` patterns come last and
win. A file named on the command line is checked against ``--exclude`` only
(naming a file is asking for it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import ConfigurationError

__all__ = ["IGNORE_FILE", "Ignore", "rules_for"]

IGNORE_FILE = ".assetcacheignore"


def _spec(lines: Iterable[str], origin: str) -> Any:
    import pathspec

    try:
        return pathspec.GitIgnoreSpec.from_lines(list(lines))
    except Exception as exc:  # pathspec raises several types for a bad pattern
        raise ConfigurationError(f"bad ignore pattern in {origin}: {exc}") from None


@dataclass(frozen=True)
class _Layer:
    base: Path  # patterns are relative to this folder
    spec: Any


class Ignore:
    """The rules for one folder given on the command line (``root``)."""

    def __init__(self, root: str | os.PathLike[str], layers: Sequence[_Layer]) -> None:
        self.root = Path(os.path.abspath(root))
        self.layers = list(layers)

    def __bool__(self) -> bool:
        return bool(self.layers)

    def applies(self) -> bool:
        """Whether any rule can leave something out."""
        return bool(self.layers)

    def _rel(self, base: Path, path: Path, is_dir: bool) -> str | None:
        try:
            rel = path.relative_to(base).as_posix()
        except ValueError:
            return None
        if rel in ("", "."):
            return None
        return rel + "/" if is_dir else rel

    def ignored(self, path: str | os.PathLike[str], *, is_dir: bool = False) -> bool:
        """Whether ``path`` (inside the root) is left out; the last matching layer decides."""
        p = Path(os.path.abspath(path))
        if p.name == IGNORE_FILE:
            return True  # the rules themselves are never an input
        verdict = False
        for layer in self.layers:
            rel = self._rel(layer.base, p, is_dir)
            if rel is None:
                continue
            result = layer.spec.check_file(rel)
            if result.include is not None:
                verdict = bool(result.include)
        return verdict

    def prune(self, folder: str, dirs: list[str], files: list[str]) -> None:
        """Drop, in place, the entries of one ``os.walk`` step that are ignored."""
        if not self.layers:
            return
        dirs[:] = [d for d in dirs if not self.ignored(os.path.join(folder, d), is_dir=True)]
        files[:] = [f for f in files if not self.ignored(os.path.join(folder, f))]


def _ignore_files(root: Path) -> list[Path]:
    found = []
    for folder in (root, *root.parents):
        candidate = folder / IGNORE_FILE
        if candidate.is_file():
            found.append(candidate)
    return found[::-1]  # outermost first: the nearest decides last


def rules_for(root: str | os.PathLike[str], excludes: Sequence[str] = ()) -> Ignore:
    """The ignore rules for a folder given on the command line."""
    base = Path(os.path.abspath(root))
    layers = []
    for file in _ignore_files(base):
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read {file}: {exc}") from None
        layers.append(_Layer(file.parent, _spec(lines, str(file))))
    if excludes:
        layers.append(_Layer(base, _spec(excludes, "--exclude")))
    return Ignore(base, layers)


def excluded_file(path: str, excludes: Sequence[str]) -> bool:
    """Whether a file named on the command line matches an ``--exclude`` pattern."""
    if not excludes:
        return False
    spec = _spec(excludes, "--exclude")
    rel = os.path.normpath(path).replace(os.sep, "/")
    return bool(spec.match_file(rel) or spec.match_file(os.path.basename(rel)))
