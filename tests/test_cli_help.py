"""The command as a whole: help text, version, logging, and real subprocess runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from cli_support import invoke, run_script
from helpers import API_KEY, write_images

from assetcache import __version__
from assetcache._cli import cli
from assetcache.emulator import Emulator

COMMANDS = {
    "upload",
    "status",
    "ls",
    "stats",
    "refresh",
    "prune",
    "verify",
    "forget",
    "export",
    "import",
    "doctor",
    "emulator",
    "proxy",
    "advance",
    "emulator-status",
    "config",
    "path",
    "completion",
}


def test_every_command_and_option_has_help_text() -> None:
    assert set(cli.commands) == COMMANDS
    for name, command in cli.commands.items():
        assert command.help and command.get_short_help_str().strip(), name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts}"
        result = invoke(name, "--help")
        assert result.exit_code == 0 and "Usage:" in result.stdout
        assert command.get_short_help_str().split()[0] in result.stdout
    top = invoke("--help")
    assert top.exit_code == 0
    for name in COMMANDS:
        assert f"  {name} " in top.stdout
    assert "Exit codes" in top.stdout


def test_unknown_command_and_option_are_usage_errors() -> None:
    assert invoke("frobnicate").exit_code == 2
    assert invoke("ls", "--frobnicate").exit_code == 2


def test_no_api_key_option_on_the_command_line() -> None:
    names = {opt for p in cli.params for opt in getattr(p, "opts", [])}
    for command in cli.commands.values():
        names |= {opt for p in command.params for opt in getattr(p, "opts", [])}
    assert "--api-key" not in names and "--api-key-file" in names


def test_version_without_importing_httpx() -> None:
    assert invoke("--version").stdout.strip() == f"assetcache, version {__version__}"
    code = (
        "import sys; from assetcache._cli import main; sys.argv = ['assetcache', '--version']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('httpx' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines() == [f"assetcache, version {__version__}", "False"]


def test_verbose_logs_through_logging_without_the_key(emu: Emulator, tmp_path: Path) -> None:
    (a,) = write_images(tmp_path, 1)
    emu.fail_next("503")
    result = invoke(
        "--db",
        tmp_path / "c.db",
        "--api-url",
        emu.base_url,
        "-v",
        "upload",
        a,
        env={"RUNWARE_API_KEY": API_KEY},
    )
    assert result.exit_code == 0
    assert "INFO assetcache: retrying 1 upload(s)" in result.stderr
    assert API_KEY not in result.output
    quiet = invoke(
        "--db",
        tmp_path / "c2.db",
        "--api-url",
        emu.base_url,
        "upload",
        a,
        env={"RUNWARE_API_KEY": API_KEY},
    )
    assert "INFO" not in quiet.stderr


# -- the installed console script ------------------------------------------------------------


def test_script_upload_ls_stats_status(tmp_path: Path) -> None:
    folder = tmp_path / "img"
    write_images(folder, 1, 2)
    base = ("--emulator", "--db", tmp_path / "cache.db")
    up = run_script(*base, "upload", folder)
    assert up.returncode == 0, up.stderr
    assert len(up.stdout.splitlines()) == 2
    # Not a terminal: no progress bar, only the summary.
    (summary,) = up.stderr.strip().splitlines()
    assert summary.startswith("2 file(s): 2 uploaded, 0 re-uploaded, 0 from cache, 0 failed; ")
    entries = json.loads(run_script(*base, "ls", "--json").stdout)
    assert len(entries) == 2 and {e["state"] for e in entries} == {"fresh"}
    stats = json.loads(run_script(*base, "stats", "--json").stdout)
    assert stats["uploads"] == 2 and stats["entries"] == 2
    status = json.loads(run_script(*base, "status", "--json", folder).stdout)
    assert status["summary"]["fresh"] == 2


def test_script_exit_codes(tmp_path: Path) -> None:
    (a,) = write_images(tmp_path, 1)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    no_key = run_script("--db", tmp_path / "c.db", "upload", a)
    assert no_key.returncode == 2 and "RUNWARE_API_KEY" in no_key.stderr
    some_failed = run_script("--emulator", "--db", tmp_path / "c.db", "upload", a, bad)
    assert some_failed.returncode == 1 and "Traceback" not in some_failed.stderr
    assert run_script("--emulator", "--db", tmp_path / "c.db", "doctor").returncode == 0
    bad_duration = run_script("--db", tmp_path / "c.db", "prune", "--older-than", "forever")
    assert bad_duration.returncode == 2 and "invalid duration" in bad_duration.stderr


@pytest.mark.parametrize("command", ["export", "prune --dry-run --json", "verify --json"])
def test_script_maintenance_commands_run(tmp_path: Path, command: str) -> None:
    (a,) = write_images(tmp_path, 1)
    base = ("--emulator", "--db", tmp_path / "cache.db")
    assert run_script(*base, "upload", a).returncode == 0
    proc = run_script(*base, *command.split())
    assert proc.returncode == 0, proc.stderr
    if "--json" in command or command == "export":
        first = proc.stdout.splitlines()[0] if command == "export" else proc.stdout
        assert json.loads(first)


def test_script_emulator_serves_until_stopped() -> None:
    from cli_support import script

    proc = subprocess.Popen(
        [script(), "emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("listening on http://127.0.0.1:")
        import httpx

        url = line.split()[-1]
        resp = httpx.post(url, json=[{"taskType": "imageUpload", "taskUUID": "x"}], timeout=10)
        assert resp.status_code in (200, 400, 401)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
