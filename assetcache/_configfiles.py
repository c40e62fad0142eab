"""Configuration files: find them, read them, say where each value came from.

Two files can hold settings, both TOML:

* the **user** file, ``config.toml`` in the platformdirs user config folder
  (``~/.config/assetcache/config.toml`` on Linux), or the file named by
  ``ASSETCACHE_CONFIG`` (an empty value: no user file);
* the **project** table ``[tool.assetcache]`` of the nearest ``pyproject.toml``
  at or above the working folder (``ASSETCACHE_NO_PROJECT_CONFIG=1``: none).

Keys are the settings' names, ``snake_case`` (``kebab-case`` is accepted).
Relative paths in a file are relative to that file's folder; ``~`` expands.
This module only reads: it knows no defaults, no environment variables of the
settings and no precedence; it returns each file's values with their origin.

The API key is a secret: a project file never provides it (it is committed,
shared, published), and the user file provides it only when no one but its
owner can read it (mode ``0600`` or stricter), as ssh does with its keys.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import ConfigurationError

__all__ = [
    "ConfigFile",
    "SECRET_KEYS",
    "USER_ONLY_KEYS",
    "find_project_file",
    "load_files",
    "read_project",
    "read_user",
    "user_config_path",
]

#: Keys that hold a secret: read only from a file only its owner can read.
SECRET_KEYS = frozenset({"api_key"})
#: Keys a shared file must not set: whoever writes it would vouch for itself.
USER_ONLY_KEYS = frozenset({"shared_db"})


@dataclass(frozen=True)
class ConfigFile:
    """The settings one file provides."""

    kind: str  #: ``"user"`` or ``"project"``
    path: Path
    values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """Where a value from this file came from, as ``assetcache config`` prints it."""
        where = f"{self.path}" if self.kind == "user" else f"{self.path} [tool.assetcache]"
        return f"{self.kind} file {where}"


def user_config_path(env: Mapping[str, str] | None = None) -> Path | None:
    """The user config file's path (whether or not it exists); ``None``: disabled."""
    env = os.environ if env is None else env
    named = env.get("ASSETCACHE_CONFIG")
    if named is not None:
        return Path(named).expanduser() if named else None
    if sys.platform.startswith("linux"):  # platformdirs' rule, without its import cost
        base = env.get("XDG_CONFIG_HOME", "").strip() or os.path.expanduser("~/.config")
        return Path(base) / "assetcache" / "config.toml"
    import platformdirs

    return Path(platformdirs.user_config_dir("assetcache", appauthor=False)) / "config.toml"


def find_project_file(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` at or above ``start`` (default: the working folder)."""
    try:
        here = Path(start if start is not None else os.getcwd()).absolute()
    except OSError:  # the working folder was deleted
        return None
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


#: Parsed files by (path, mtime_ns, size): the CLI and the library resolve once each.
_parsed: dict[tuple[str, int, int], dict[str, Any]] = {}
#: A pyproject.toml that may configure us (most do not: their parse is skipped):
#: a ``tool.assetcache`` key or header, or a bare ``assetcache`` key (ours only
#: in the ``[tool]`` table: elsewhere it is a script's or a package's name).
_OURS = re.compile(r"(tool\s*\.\s*[\"']?assetcache)|^\s*[\"']?assetcache[\"']?\s*[=.]", re.M)
_HEADER = re.compile(r"^\s*\[\[?([^\]\n]*)\]", re.M)


def _may_configure_us(text: str) -> bool:
    """Whether ``text`` may hold ``[tool.assetcache]`` (true when in doubt)."""
    for found in _OURS.finditer(text):
        if found.group(1):
            return True
        headers = _HEADER.findall(text, 0, found.start())
        table = re.sub(r"[\s\"']", "", headers[-1]) if headers else ""
        if table == "tool":
            return True
    return False


def _toml_cached(text: str, path: Path, st: os.stat_result) -> dict[str, Any]:
    key = (str(path), st.st_mtime_ns, st.st_size)
    found = _parsed.get(key)
    if found is None:
        found = _parsed[key] = _toml_loads(text, path)
    return found


def _toml_loads(text: str, path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config file {path} is not valid TOML: {exc}") from None


def _read(path: Path) -> tuple[str, os.stat_result] | None:
    try:
        with open(path, encoding="utf-8") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigurationError(f"config file {path} is not a regular file")
            return f.read(), st
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ConfigurationError(f"config file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read config file {path}: {exc.strerror}") from None


def _normalise(
    table: Mapping[str, Any], path: Path, where: str, path_keys: Iterable[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    paths = set(path_keys)
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        if isinstance(value, dict):
            raise ConfigurationError(
                f'{where}: {raw_key!r} is a table; settings are plain keys (e.g. db = "...")'
            )
        if key in paths and isinstance(value, str) and value and "://" not in value:
            p = Path(value).expanduser()
            value = str(p if p.is_absolute() else (path.parent / p))
        out[key] = value
    return out


def read_user(path: Path | None, path_keys: Iterable[str] = ()) -> ConfigFile | None:
    """The user file's settings, or ``None`` when there is no such file."""
    if path is None:
        return None
    got = _read(path)
    if got is None:
        return None
    text, st = got
    values = _normalise(_toml_cached(text, path, st), path, f"config file {path}", path_keys)
    for key in SECRET_KEYS & values.keys():
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigurationError(
                f"config file {path} holds {key} but others can read it "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); the key was not read. "
                f"Run: chmod 600 {path}"
            )
        if not isinstance(values[key], str) or not values[key].strip():
            raise ConfigurationError(f"config file {path}: {key} must be a non-empty string")
        values[key] = values[key].strip()
    return ConfigFile("user", path, values)


def read_project(path: Path | None, path_keys: Iterable[str] = ()) -> ConfigFile | None:
    """``[tool.assetcache]`` of ``path`` (a pyproject.toml), or ``None`` without one."""
    if path is None:
        return None
    got = _read(path)
    if got is None:
        return None
    text, st = got
    if not _may_configure_us(text):  # cheap: most projects do not configure us
        return None
    tool = _toml_cached(text, path, st).get("tool", {})
    table = tool.get("assetcache") if isinstance(tool, dict) else None
    if table is None:
        return None
    where = f"{path} [tool.assetcache]"
    if not isinstance(table, dict):
        raise ConfigurationError(f"{where} must be a table")
    values = _normalise(table, path, where, path_keys)
    for key in SECRET_KEYS & values.keys():
        raise ConfigurationError(
            f"{where} sets {key}: a project file is shared, so it never holds the API key "
            "(use RUNWARE_API_KEY, --api-key-file or the user config file, mode 600)"
        )
    for key in USER_ONLY_KEYS & values.keys():
        raise ConfigurationError(
            f"{where} sets {key}: a project file is shared, so it cannot vouch for a "
            "database others can write (use --shared-db, ASSETCACHE_SHARED_DB or the "
            "user config file)"
        )
    return ConfigFile("project", path, values)


def load_files(
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    path_keys: Iterable[str] = (),
) -> list[ConfigFile]:
    """The config files that exist, lowest precedence first: user, then project."""
    env = os.environ if env is None else env
    keys = tuple(path_keys)
    out: list[ConfigFile] = []
    user = read_user(user_config_path(env), keys)
    if user is not None:
        out.append(user)
    if env.get("ASSETCACHE_NO_PROJECT_CONFIG", "") in ("", "0"):
        project = read_project(find_project_file(cwd), keys)
        if project is not None:
            out.append(project)
    return out
