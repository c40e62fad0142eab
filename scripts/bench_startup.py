"""Start-up: ``assetcache --version`` and ``assetcache status EMPTY`` against ``python -c pass``.

    python scripts/bench_startup.py [--rounds 21]

Times whole processes, alternating the three commands round by round
(``status`` runs on an empty folder with a cache database that already
exists, as on every run but the first). Each command must also load no HTTP
stack: it is run once with ``PYTHONPROFILEIMPORTTIME=1`` and its import list
checked for httpx(2), httpcore(2), h11, anyio and ssl. Target: each command at
most 8x the bare interpreter's wall time, and no HTTP import. The same warm
status with a user config file and a ``[tool.assetcache]`` table in the working
folder's pyproject.toml runs beside it: at most 1.15x (config loading must not
slow it). Exit 1 when missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _benchlib import KEY, Report, median

TARGET = 8.0
#: A warm status reading a user file and a project table vs one with neither.
CONFIG_TARGET = 1.15
HTTP_STACK = ("httpx", "httpx2", "httpcore", "httpcore2", "h11", "anyio", "ssl")


def assetcache_command() -> list[str]:
    script = Path(sys.executable).with_name("assetcache")
    return [str(script)] if script.exists() else [sys.executable, "-m", "assetcache"]


def imported(command: list[str], env: dict[str, str]) -> set[str]:
    """Top-level names of the modules ``command`` imports."""
    out = subprocess.run(
        command,
        env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    names = set()
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    report = Report()
    try:
        empty = tmp / "empty"
        empty.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ASSETCACHE_"))}
        env.update(RUNWARE_API_KEY=KEY, ASSETCACHE_DB=str(tmp / "cache.db"), ASSETCACHE_CONFIG="")
        # The same status with both config files present: a user file and a
        # pyproject.toml with [tool.assetcache] in the working folder.
        project = tmp / "project"
        project.mkdir()
        (project / "pyproject.toml").write_text(
            '[project]\nname = "app"\n\n[tool.assetcache]\nconcurrency = 4\n'
        )
        user = tmp / "config.toml"
        user.write_text("keep_copies = false\n")
        user.chmod(0o600)
        configured = {**env, "ASSETCACHE_CONFIG": str(user)}
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "assetcache --version": [*assetcache_command(), "--version"],
            "assetcache status EMPTY": [*assetcache_command(), "status", str(empty)],
            "assetcache status EMPTY (config files)": [
                *assetcache_command(),
                "status",
                str(empty),
            ],
        }
        envs = {name: env for name in commands}
        envs["assetcache status EMPTY (config files)"] = configured
        cwds = {name: None for name in commands}
        cwds["assetcache status EMPTY (config files)"] = project
        for name, command in commands.items():  # creates the database; checks each one runs
            subprocess.run(
                command,
                env=envs[name],
                cwd=cwds[name],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
            )
        times: dict[str, list[float]] = {name: [] for name in commands}
        order = list(commands)
        for i in range(args.rounds):
            k = i % len(order)
            for name in order[k:] + order[:k]:
                started = time.perf_counter()
                subprocess.run(
                    commands[name],
                    env=envs[name],
                    cwd=cwds[name],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=True,
                )
                times[name].append(time.perf_counter() - started)
        base = median(times["python -c pass"])
        print(
            f"wall time, median of {args.rounds}: "
            + ", ".join(f"{name} {median(t) * 1000:.0f} ms" for name, t in times.items())
        )
        for name, key in (
            ("assetcache --version", "version"),
            ("assetcache status EMPTY", "status_empty"),
        ):
            http = sorted(set(HTTP_STACK) & imported(commands[name], env))
            print(f"{name}: imports {', '.join(http) if http else 'no HTTP stack'}")
            if http:
                report.missed.append(f"{key} imports {', '.join(http)}")
            report.ratio(f"startup_{key}_vs_python", median(times[name]) / base, "<=", TARGET)
        # Reading both config files must not slow a warm status noticeably.
        report.ratio(
            "startup_status_config_files_vs_none",
            median(times["assetcache status EMPTY (config files)"])
            / median(times["assetcache status EMPTY"]),
            "<=",
            CONFIG_TARGET,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.exit()


if __name__ == "__main__":
    main()
