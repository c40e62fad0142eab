"""``assetcache status`` on 100,000 cached files against ``git status``.

    python scripts/bench_scan.py [--folders 100] [--files 1000] [--rounds 7] [--keep DIR]

Builds a tree of ``--folders`` x ``--files`` small distinct PNGs, commits it
to a git repository whose git dir sits beside the tree (so both tools see the
same files and nothing else), and fills the cache through the public API
against the emulator (a separate process on 127.0.0.1). Once both are warm,
runs ``git status --porcelain`` and ``assetcache status TREE`` (whole
processes, output discarded) in alternation and prints the median of the
per-round ratios. Then it does the same for the first status after a change
to the cache (which reads each folder's rows once and remembers them fresh;
reported, no target). Target: at most 1.5x git (stretch: 1.2x). Exit 1 when the
target is missed, 2 when git is not installed.

``--keep DIR`` builds the tree and cache in DIR once and reuses them on later
runs (building takes about a minute); without it everything lives in a
temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _benchlib import KEY, EmulatorProcess, Report, alternate, median, png

TARGET, STRETCH = 1.5, 1.2


def git(args: list[str], git_dir: Path, tree: Path, **kwargs: object) -> object:
    env = dict(
        os.environ,
        GIT_DIR=str(git_dir),
        GIT_WORK_TREE=str(tree),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
    )
    return subprocess.run(
        [
            "git",
            "-c",
            "gc.auto=0",
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
            *args,
        ],
        cwd=tree,
        env=env,
        check=True,
        **kwargs,
    )  # type: ignore[call-overload]


def build(base: Path, folders: int, files: int) -> tuple[Path, Path, Path, str]:
    """Tree, git dir, cache database and API URL; built once per ``base``."""
    tree, git_dir, db, stamp = base / "tree", base / "git", base / "cache.db", base / "built.json"
    if stamp.exists():
        info = json.loads(stamp.read_text())
        if info["folders"] == folders and info["files"] == files:
            return tree, git_dir, db, info["url"]
    for old in (tree, git_dir):
        shutil.rmtree(old, ignore_errors=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    started = time.perf_counter()
    paths = []
    for d in range(folders):
        folder = tree / f"d{d:03d}"
        folder.mkdir(parents=True)
        for f in range(files):
            path = folder / f"img{f:04d}.png"
            path.write_bytes(png(d * files + f))
            paths.append(str(path))
    print(f"built {len(paths)} files in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    # Let every file age past the racy window (2 s) before anyone records it:
    # a racily-clean file is re-read on every look, by git and by us alike.
    time.sleep(2.2)
    git(["init", "-q"], git_dir, tree)
    git(["add", "-A"], git_dir, tree)
    git(["commit", "-q", "--no-gpg-sign", "-m", "assets"], git_dir, tree)

    from assetcache import AssetCache

    started = time.perf_counter()
    with (
        EmulatorProcess() as emu,
        AssetCache(KEY, base_url=emu.url, db_path=db, batch_size=256) as cache,
    ):
        for i in range(0, len(paths), 10_000):
            failed = [r for r in cache.resolve_many(paths[i : i + 10_000]) if not r.ok]
            if failed:
                raise SystemExit(f"could not fill the cache: {failed[0].error}")
        url = emu.url
    print(f"cached {len(paths)} files in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    stamp.write_text(json.dumps({"folders": folders, "files": files, "url": url}))
    return tree, git_dir, db, url


def assetcache_command() -> list[str]:
    script = Path(sys.executable).with_name("assetcache")
    return [str(script)] if script.exists() else [sys.executable, "-m", "assetcache"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folders", type=int, default=100)
    parser.add_argument("--files", type=int, default=1000, help="files per folder")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--keep", metavar="DIR", help="build in DIR and reuse it next time")
    args = parser.parse_args()
    if shutil.which("git") is None:
        print("git is not installed (Debian/Ubuntu: apt-get install git)", file=sys.stderr)
        sys.exit(2)

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-scan-"))
    base.mkdir(parents=True, exist_ok=True)
    report = Report()
    try:
        tree, git_dir, db, url = build(base, args.folders, args.files)
        total = args.folders * args.files
        # As installed: byte-code caches written once and reused (PYTHONDONTWRITEBYTECODE
        # would make every run compile each module whose cache is stale).
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["RUNWARE_API_KEY"] = KEY
        cli = [*assetcache_command(), "--db", str(db), "--api-url", url]
        ours = [*cli, "status", str(tree)]

        # Correctness first: every file must be reported fresh, from the stat cache.
        out = subprocess.run(
            [*cli, "status", "--json", str(tree)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        summary = json.loads(out.stdout)["summary"] if out.returncode == 0 else {}
        if summary.get("fresh") != total or sum(summary.values()) != total:
            raise SystemExit(
                f"assetcache status did not report {total} fresh files: "
                f"{summary or out.stderr.strip()}"
            )

        def run_git() -> float:
            started = time.perf_counter()
            git(["status", "--porcelain"], git_dir, tree, stdout=subprocess.DEVNULL)
            return time.perf_counter() - started

        def run_ours() -> float:
            started = time.perf_counter()
            subprocess.run(
                ours, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
            )
            return time.perf_counter() - started

        run_git(), run_ours()  # warm both: page cache, dentries, git's index refresh
        ours_t, git_t = alternate(args.rounds, run_ours, run_git)
        ratios = sorted(a / b for a, b in zip(ours_t, git_t, strict=True))
        print(
            f"status of {total} files: assetcache {median(ours_t):.3f}s, "
            f"git {median(git_t):.3f}s (medians of {args.rounds}); "
            f"per-round ratios {' '.join(f'{r:.2f}' for r in ratios)}"
        )
        report.ratio("status_vs_git", median(ratios), "<=", TARGET)
        print(f"(stretch target: <= {STRETCH:g})")
        from assetcache import _status

        print(
            "listing: "
            + (
                "C (assetcache/_walk.c), on threads"
                if _status._c_listing is not None
                else "pure Python (the C listing is not built), with a helper process"
            )
        )

        # The pure-Python fallback, measured the same way (no target): what an
        # install without a C compiler gets.
        pure_env = dict(env, ASSETCACHE_PURE_PYTHON="1")

        def run_ours_pure() -> float:
            started = time.perf_counter()
            subprocess.run(
                ours,
                env=pure_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
            )
            return time.perf_counter() - started

        pure_t, pure_git_t = alternate(max(3, args.rounds // 2), run_ours_pure, run_git)
        pure = median([a / b for a, b in zip(pure_t, pure_git_t, strict=True)])
        print(
            f"with the pure-Python listing (ASSETCACHE_PURE_PYTHON=1): assetcache "
            f"{median(pure_t):.3f}s, git {median(pure_git_t):.3f}s: {pure:.2f}x git (no target)"
        )

        # The first status after the cache changed (an upload, a prune) finds
        # its remembered fresh ranges void and reads each folder's rows once,
        # remembering them again: measured the same way, no target (paid once).
        def void_marks() -> None:
            with sqlite3.connect(db) as conn:
                conn.execute(
                    "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'scan_gen'"
                )

        def run_ours_after_a_change() -> float:
            void_marks()
            return run_ours()

        cold_t, cold_git_t = alternate(max(3, args.rounds // 2), run_ours_after_a_change, run_git)
        cold = median([a / b for a, b in zip(cold_t, cold_git_t, strict=True)])
        print(
            f"status right after a change to the cache: assetcache {median(cold_t):.3f}s, "
            f"git {median(cold_git_t):.3f}s: {cold:.2f}x git (once per change; no target)"
        )

        # Where the time goes: the library call alone, in this process (imports done).
        from assetcache import AssetCache

        with AssetCache(KEY, base_url=url, db_path=db) as cache:
            inner = []
            for _ in range(3):
                started = time.perf_counter()
                found = cache.status_report([str(tree)]).total
                inner.append(time.perf_counter() - started)
        print(
            f"of which cache.status_report() in-process: {median(inner):.3f}s for {found} "
            "files (listing threads or a helper process share the walk); the rest is "
            "interpreter start-up and imports"
        )
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    report.exit()


if __name__ == "__main__":
    main()
