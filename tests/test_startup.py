"""Start-up stays light: ``--version`` and ``status`` of an empty folder load no HTTP stack.

Each check runs a fresh interpreter (imports are per process) and inspects
``sys.modules`` after the command, so a module-level ``import httpx`` added
anywhere on those paths fails here. Timing is ``scripts/bench_startup.py``'s job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HTTP_STACK = {"httpx", "httpx2", "httpcore", "httpcore2", "h11", "anyio", "ssl"}

PROBE = r"""
import json, sys
sys.argv = ["assetcache", *json.loads(sys.argv[1])]
from assetcache._cli import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code or 0
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules}),
                  "ours": sorted(m for m in sys.modules if m.startswith("assetcache."))}),
      file=sys.stderr)
"""


def run_cli(args: list[str], tmp_path: Path) -> tuple[int, set[str], str]:
    code, modules, stdout, _ = run_cli_ours(args, tmp_path)
    return code, modules, stdout


def run_cli_ours(args: list[str], tmp_path: Path) -> tuple[int, set[str], str, set[str]]:
    """:func:`run_cli`, and the package's own modules the command loaded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ASSETCACHE_"))}
    env.update(RUNWARE_API_KEY="startup-test-key", ASSETCACHE_DB=str(tmp_path / "cache.db"))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = json.loads(out.stderr.strip().splitlines()[-1])
    return report["code"], set(report["modules"]), out.stdout, set(report["ours"])


def test_version_loads_no_http_stack_and_no_cache(tmp_path):
    code, modules, stdout = run_cli(["--version"], tmp_path)
    assert code == 0 and "assetcache, version" in stdout
    assert not modules & HTTP_STACK
    assert "sqlite3" not in modules  # the cache itself is not even opened


def test_status_of_an_empty_folder_loads_no_http_stack(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, modules, _ = run_cli(["status", str(empty)], tmp_path)
    assert code == 0
    assert "assetcache" in modules and "sqlite3" in modules  # it did open the cache
    assert not modules & HTTP_STACK


def test_status_loads_none_of_the_upload_rooms(tmp_path):
    # A status runs no plan: the effects, the resolve, lifecycle, maintenance
    # and task-path plans and the HTTP calls stay unloaded (start-up time).
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.png").write_bytes(b"not an image")
    code, _, _, ours = run_cli_ours(["status", str(empty)], tmp_path)
    assert code == 0 and "assetcache._status" in ours and "assetcache._client" in ours
    rooms = {"_effects", "_resolve", "_lifecycle", "_maintenance", "_taskpath", "_tasks"}
    assert not {f"assetcache.{room}" for room in rooms} & ours


def test_importing_the_package_loads_the_cache_on_first_use():
    probe = (
        "import sys, assetcache\n"
        "before = {'assetcache._client', 'httpx'} & set(sys.modules)\n"
        "cls = assetcache.AssetCache\n"
        "print(sorted(before), cls.__module__, 'httpx' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["[]", "assetcache._client", "False"]


def test_the_console_script_imports_no_http_stack_for_version():
    script = Path(sys.executable).with_name("assetcache")
    if not script.exists():
        pytest.skip("the assetcache console script is not installed next to this Python")
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    out = subprocess.run(
        [str(script), "--version"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    names = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in out.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "click" in names  # the import log was read
    assert not names & HTTP_STACK


@pytest.mark.parametrize("check", [False, True])
def test_status_ends_at_once_with_its_output_and_exit_code(tmp_path, check):
    """``python -m assetcache status`` skips the interpreter's teardown: its output
    and exit code are still all there (``--check``: 1, a file is new)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "new.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ASSETCACHE_"))}
    env.update(RUNWARE_API_KEY="startup-test-key", ASSETCACHE_DB=str(tmp_path / "cache.db"))
    args = ["status", "--porcelain", *(["--check"] if check else []), str(folder)]
    out = subprocess.run(
        [sys.executable, "-m", "assetcache", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == (1 if check else 0), out.stderr
    assert out.stdout.splitlines() == [f"new\t{folder / 'new.png'}"]
