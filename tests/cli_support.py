"""Running the ``assetcache`` command in tests: CliRunner, the emulator, time travel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from assetcache._cli import EMULATOR_KEY, cli
from assetcache.emulator import Emulator

#: Settings from the machine running the tests must not leak in.
CLEAN_ENV: dict[str, str | None] = {
    "RUNWARE_API_KEY": None,
    "ASSETCACHE_DB": None,
    "ASSETCACHE_API_URL": None,
}


def invoke(*args: Any, env: dict[str, str | None] | None = None, input: Any = None) -> Result:
    return CliRunner().invoke(
        cli,
        [str(a) for a in args],
        env={**CLEAN_ENV, **(env or {})},
        input=input,
        catch_exceptions=False,
    )


class EmulatorCLI:
    """``assetcache --emulator --db <tmp>/cache.db ...``, and the emulator's clock."""

    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "cache.db"

    def __call__(self, *args: Any, **kwargs: Any) -> Result:
        return invoke("--emulator", "--db", self.db, *args, **kwargs)

    def advance(self, days: float) -> None:
        """Move the persisted emulator clock (the next command sees it)."""
        Emulator(api_key=EMULATOR_KEY, state_path=f"{self.db}.emulator.json").advance(days=days)


def script() -> str:
    """The installed ``assetcache`` console script of this interpreter's environment."""
    exe = Path(sys.executable).with_name("assetcache")
    return str(exe) if exe.exists() else (shutil.which("assetcache") or "assetcache")


def run_script(
    *args: Any, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    return subprocess.run(
        [script(), *map(str, args)],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        cwd=cwd,
        timeout=120,
    )
