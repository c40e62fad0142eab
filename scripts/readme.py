"""Keep the README's output blocks true: run the commands they show, compare or rewrite.

    python scripts/readme.py --check     # exit 1 (with a diff) when a block is out of date
    python scripts/readme.py --write     # rewrite the blocks with the real output

A block is checked when an HTML comment ``<!-- readme: ... -->`` comes right
before its fence. Each line of the block that starts with ``$ `` is a command;
the lines after it, up to the next command, are its output (stdout and stderr
as a terminal would show them, then ``[exit N]`` when N is not 0). A line
``...`` in the expected output stands for any number of lines (elided).

Commands run with ``bash`` in a session folder, ``assetcache`` being the
package's CLI against the bundled emulator (``assetcache --emulator``) with
``ASSETCACHE_DB=cache.db``; no user or project config file is read. A
comment after `` # `` on a command line is prose and not run.

The comment's actions (separated by ``;``) prepare what the block needs and
are not shown; ``@K action`` runs just before the block's K-th command:

``session NAME``            a new, empty session folder (shown as ``/tmp/NAME``)
``images DIR PATTERN N [S]`` N PNGs ``DIR/PATTERN.format(i)``, i = 1..N (seeds S+i)
``image PATH SEED``         one PNG (an edit, when PATH exists)
``copy SRC DST``, ``rm PATH``, ``write PATH TEXT...`` (``\\n``: newline), ``garbage PATH``
``env NAME=VALUE``, ``unset NAME``  the environment of later commands
``advance DURATION``        move the emulator's clock (``27.5d``, ``12h``)
``sh COMMAND...``           run a command, output not shown

Outputs are compared modulo imageUUIDs, times, durations, sizes, ports and
column padding, so a block only fails when the command says something else.
"""

from __future__ import annotations

import argparse
import difflib
import os
import random
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = re.compile(r"^<!--\s*readme:(.*?)-->\s*$")
FENCE = re.compile(r"^(```+)(.*)$")


# -- images ------------------------------------------------------------------------


def png(seed: int, side: int = 12) -> bytes:
    """A small deterministic RGB PNG."""
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + rng.randbytes(side * 3) for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


# -- normalising -------------------------------------------------------------------

_RULES = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?Z?"), "<time>"),
    (re.compile(r"\d{8}T\d{6}"), "<time>"),
    (re.compile(r"\b\d{9,}\.\d+\b"), "<time>"),
    (re.compile(r"(?:127\.0\.0\.1|localhost):\d+"), "127.0.0.1:<port>"),
    (re.compile(r"\b\d+(?:\.\d+)? ?(?:B|KiB|MiB|GiB|TiB)\b"), "<size>"),
    (re.compile(r"\b(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?(?<=[dhms])(?![\w.])"), "<dur>"),
]


def normalise(line: str) -> str:
    for pattern, repl in _RULES:
        line = pattern.sub(repl, line)
    return " ".join(line.split())


# -- the README's blocks -----------------------------------------------------------


@dataclass
class Block:
    start: int  # index of the first line inside the fence
    end: int  # index of the closing fence
    actions: list[str]
    lines: list[str]


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)


def blocks(text: list[str]) -> list[Block]:
    out = []
    i = 0
    while i < len(text):
        m = MARK.match(text[i])
        if m:
            j = i + 1
            while j < len(text) and not text[j].strip():
                j += 1
            fence = FENCE.match(text[j]) if j < len(text) else None
            if fence is None:
                raise SystemExit(f"README line {i + 1}: a readme comment must precede a fence")
            k = j + 1
            while k < len(text) and text[k].rstrip() != fence.group(1):
                k += 1
            actions = [a.strip() for a in m.group(1).split(";") if a.strip()]
            out.append(Block(j + 1, k, actions, text[j + 1 : k]))
            i = k
        i += 1
    return out


def steps(lines: list[str]) -> list[Step]:
    out: list[Step] = []
    for line in lines:
        if line.startswith("$ "):
            out.append(Step(line[2:]))
        elif out:
            out[-1].expected.append(line)
        elif line.strip():
            raise SystemExit(f"README block starts with output, not a command: {line!r}")
    return out


# -- running -----------------------------------------------------------------------


class Session:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.name = "readme"
        self.folder = base / self.name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.bin = base / ".bin"
        self.bin.mkdir(exist_ok=True)
        self.extra_env: dict[str, str | None] = {}
        wrapper = self.bin / "assetcache"
        python = shlex.quote(sys.executable)
        wrapper.write_text(f'#!/bin/sh\nexec {python} -m assetcache --emulator "$@"\n')
        wrapper.chmod(0o755)

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ASSETCACHE_", "RUNWARE_", "PYTHON"))
        }
        env.update(
            PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
            ASSETCACHE_DB="cache.db",
            ASSETCACHE_CONFIG="",
            ASSETCACHE_NO_PROJECT_CONFIG="1",
            COLUMNS="200",
            LC_ALL="C.UTF-8",
            TZ="UTC",
            PYTHONPATH=str(ROOT),
        )
        for name, value in self.extra_env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def act(self, action: str) -> None:
        if action.startswith("write "):  # the text as it is (no shell-like unquoting)
            _, name, text = action.split(" ", 2)
            (self.folder / name).parent.mkdir(parents=True, exist_ok=True)
            (self.folder / name).write_text(text.replace("\\n", "\n") + "\n")
            return
        words = shlex.split(action)
        verb, args = words[0], words[1:]
        here = self.folder
        if verb == "session":  # a fresh folder and environment
            self.extra_env = {}
            self.name = args[0]
            self.folder = self.base / self.name
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
        elif verb == "images":
            folder, pattern, n = here / args[0], args[1], int(args[2])
            seed = int(args[3]) if len(args) > 3 else 0
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(1, n + 1):
                (folder / pattern.format(i)).write_bytes(png(seed + i))
        elif verb == "image":
            (here / args[0]).parent.mkdir(parents=True, exist_ok=True)
            (here / args[0]).write_bytes(png(int(args[1])))
        elif verb == "copy":
            shutil.copyfile(here / args[0], here / args[1])
        elif verb == "rm":
            (here / args[0]).unlink()
        elif verb == "write":
            (here / args[0]).parent.mkdir(parents=True, exist_ok=True)
            (here / args[0]).write_text(" ".join(args[1:]).replace("\\n", "\n") + "\n")
        elif verb == "env":
            name, _, value = args[0].partition("=")
            self.extra_env[name] = value
        elif verb == "unset":
            self.extra_env[args[0]] = None
        elif verb == "garbage":
            (here / args[0]).write_bytes(random.Random(1).randbytes(4096))
        elif verb == "advance":
            self.advance(args[0])
        elif verb == "sh":
            self.run(" ".join(shlex.quote(a) for a in args))
        else:
            raise SystemExit(f"unknown readme action {action!r}")

    def advance(self, text: str) -> None:
        from assetcache._cli import EMULATOR_KEY
        from assetcache.emulator import Emulator

        m = re.fullmatch(r"([\d.]+)([dhms])", text)
        if not m:
            raise SystemExit(f"bad duration {text!r}")
        seconds = float(m.group(1)) * {"d": 86400, "h": 3600, "m": 60, "s": 1}[m.group(2)]
        state = str(self.folder / "cache.db.emulator.json")
        Emulator(api_key=EMULATOR_KEY, state_path=state).advance(seconds=seconds)

    def run(self, command: str) -> list[str]:
        shown = re.sub(r"\s+#\s.*$", "", command)
        proc = subprocess.run(
            ["bash", "-c", shown],
            cwd=self.folder,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=120,
        )
        out = proc.stdout.replace(str(self.folder), f"/tmp/{self.name}")
        out = out.replace(str(self.base), "/tmp")
        lines = out.splitlines()
        if proc.returncode:
            lines.append(f"[exit {proc.returncode}]")
        return lines


def match(expected: list[str], actual: list[str]) -> list[int | None] | None:
    """Map each expected line to an actual line index (``...`` to None), or None."""
    exp = [normalise(x) for x in expected]
    act = [normalise(x) for x in actual]
    memo: dict[tuple[int, int], list[int | None] | None] = {}

    def go(i: int, j: int) -> list[int | None] | None:
        if (i, j) in memo:
            return memo[(i, j)]
        result: list[int | None] | None
        if i == len(exp):
            result = [] if j == len(act) else None
        elif expected[i].strip() == "...":
            result = None
            for k in range(j, len(act) + 1):
                rest = go(i + 1, k)
                if rest is not None:
                    result = [None, *rest]
                    break
        elif j < len(act) and exp[i] == act[j]:
            rest = go(i + 1, j + 1)
            result = None if rest is None else [j, *rest]
        else:
            result = None
        memo[(i, j)] = result
        return result

    return go(0, 0)


def trim(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def process(readme: Path, write: bool) -> int:
    text = readme.read_text().splitlines()
    found = blocks(text)
    problems = 0
    replacements: list[tuple[int, int, list[str]]] = []
    with tempfile.TemporaryDirectory(prefix="readme-") as tmp:
        session = Session(Path(tmp))
        for block in found:
            pre = [a for a in block.actions if not a.startswith("@")]
            later = [a for a in block.actions if a.startswith("@")]
            for action in pre:
                session.act(action)
            new_lines: list[str] = []
            for n, step in enumerate(steps(block.lines), 1):
                for action in later:
                    k, _, rest = action[1:].partition(" ")
                    if int(k) == n:
                        session.act(rest)
                actual = session.run(step.command)
                expected = trim(step.expected)
                gap = step.expected[len(expected) :]  # blank lines between commands
                mapping = match(expected, actual)
                new_lines.append(f"$ {step.command}")
                if mapping is None:
                    problems += 1
                    print(f"{readme.name}: output of `$ {step.command}` differs:", file=sys.stderr)
                    sys.stderr.writelines(
                        difflib.unified_diff(
                            [x + "\n" for x in expected],
                            [x + "\n" for x in actual],
                            "README",
                            "real output",
                        )
                    )
                    new_lines += actual
                else:  # keep elisions; take each shown line from the real output
                    new_lines += ["..." if idx is None else actual[idx] for idx in mapping]
                new_lines += gap
            replacements.append((block.start, block.end, new_lines))
    if write:
        for start, end, new in reversed(replacements):
            text[start:end] = new
        readme.write_text("\n".join(text) + "\n")
        print(f"{readme.name}: {len(found)} block(s) written ({problems} had changed)")
        return 0
    if problems:
        print(
            f"{readme.name}: {problems} command(s) out of date; run scripts/readme.py --write",
            file=sys.stderr,
        )
        return 1
    print(f"{readme.name}: {len(found)} block(s) match the real output")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="compare; exit 1 on a difference")
    mode.add_argument("--write", action="store_true", help="rewrite the blocks in place")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    return process(args.readme, args.write)


if __name__ == "__main__":
    sys.exit(main())
