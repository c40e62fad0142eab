"""A file name cannot forge a row or drive the terminal.

Names with tabs, newlines, carriage returns, ESC sequences and bytes that are
not UTF-8 go through every text output (``upload``, ``status``, ``ls``,
``verify``, ``forget``, ``refresh``, ``prune``): each file is one row, its
name quoted as git's ``core.quotePath`` does, and no control character is
written. ``--csv`` quotes every field that needs it and keeps a list of paths
unambiguous; ``--json`` keeps a non-UTF-8 name reversible (``os.fsencode``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import pytest
from cli_support import EmulatorCLI
from helpers import make_png

from assetcache._quoting import clean, csv_line, json_list, quote

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names")

FORGED = "a.png\tFORGED\thit\nvictim.png\t00000000-0000-0000-0000-000000000000\thit"
ESC = "\x1b[2Jclear.png"
CR = "cr\rlast.png"
NOT_UTF8 = os.fsdecode(b"caf\xe9.png")
NAMES = [FORGED, ESC, CR, NOT_UTF8, "semi;colon,comma.png"]
#: Tab separates columns and newline rows: neither may come from a name (the
#: column counts below check that); no other control character is written.
CONTROLS = [chr(c) for c in range(32) if c not in (9, 10)] + ["\x7f", "\x9b"]


@pytest.fixture
def ecli(tmp_path: Path) -> EmulatorCLI:
    return EmulatorCLI(tmp_path)


@pytest.fixture
def hostile_files(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for seed, name in enumerate(NAMES):
        path = folder / name
        path.write_bytes(make_png(seed + 40))
        paths.append(path)
    return paths


def assert_safe(text: str) -> None:
    """No control character but the row-ending newline reaches the terminal."""
    for ch in CONTROLS:
        assert ch not in text, f"{ch!r} written raw in {text!r}"


def rows_naming(stdout: str, needle: str) -> list[str]:
    return [line for line in stdout.splitlines() if needle in line]


def test_quote_is_git_style() -> None:
    assert quote("plain/name.png") == "plain/name.png"
    assert quote("é.png") == "é.png"  # printable non-ASCII stays readable
    assert quote("a\tb\nc.png") == '"a\\tb\\nc.png"'
    assert quote("\x1b[2J.png") == '"\\033[2J.png"'
    assert quote('say "hi"\\.png') == '"say \\"hi\\"\\\\.png"'
    assert quote(os.fsdecode(b"caf\xe9.png")) == '"caf\\351.png"'
    assert quote("\u202egnp.exe") == '"\\342\\200\\256gnp.exe"'  # bidi override
    assert clean("x\x1b[31my") == "x\\033[31my"
    assert csv_line(["a", "b\rc", 'q"', " s", "1"]) == 'a,"b\rc","q"""," s",1'
    assert json.loads(json_list(["a;b", "c,d"])) == ["a;b", "c,d"]


def test_upload_prints_one_row_per_file(ecli: EmulatorCLI, hostile_files: list[Path]) -> None:
    result = ecli("upload", *hostile_files)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(hostile_files)
    assert_safe(result.stdout)
    assert_safe(result.stderr)
    (forged,) = rows_naming(result.stdout, "FORGED")
    assert forged.startswith('"') and "a.png\\tFORGED\\thit\\nvictim.png" in forged
    assert all(len(line.split("\t")) == 3 for line in lines)  # path, uuid, outcome
    assert rows_naming(result.stdout, "\\033[2Jclear.png")
    assert rows_naming(result.stdout, "cr\\rlast.png")
    assert rows_naming(result.stdout, "caf\\351.png")


def test_failed_upload_message_is_escaped(ecli: EmulatorCLI, tmp_path: Path) -> None:
    bad = tmp_path / "bad\x1b]0;owned\x07.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 70)
    result = ecli("upload", bad)
    assert result.exit_code == 1
    assert_safe(result.stdout)
    assert_safe(result.stderr)
    assert len(result.stdout.splitlines()) == 1


def test_status_ls_verify_prune_forget_refresh(
    ecli: EmulatorCLI, hostile_files: list[Path], tmp_path: Path
) -> None:
    assert ecli("upload", *hostile_files).exit_code == 0
    n = len(hostile_files)

    status = ecli("status", "-a", tmp_path / "imgs")
    assert len(status.stdout.splitlines()) == n
    assert_safe(status.stdout)
    assert rows_naming(status.stdout, "FORGED\\thit\\nvictim")

    listing = ecli("ls")
    assert len(listing.stdout.splitlines()) == n + 1  # a header, one row per entry
    assert_safe(listing.stdout)

    refresh = ecli("refresh", "--within", "40d", "--dry-run")
    assert len(refresh.stdout.splitlines()) == n
    assert_safe(refresh.stdout)

    # Delete one file: prune drops its row; change another: verify reports it.
    hostile_files[1].unlink()
    prune = ecli("prune")
    assert len(prune.stdout.splitlines()) == 1
    assert_safe(prune.stdout)
    assert rows_naming(prune.stdout, "\\033[2Jclear.png")

    hostile_files[0].write_bytes(make_png(99))
    verify = ecli("verify")
    assert len(verify.stdout.splitlines()) == 1
    assert_safe(verify.stdout)
    assert rows_naming(verify.stdout, "FORGED\\thit")

    forget = ecli("forget", hostile_files[2])
    assert forget.exit_code == 0
    assert len(forget.stdout.splitlines()) == 1
    assert_safe(forget.stdout)
    assert "cr\\rlast.png" in forget.stdout


def test_csv_quotes_every_field_that_needs_it(ecli: EmulatorCLI, hostile_files: list[Path]) -> None:
    assert ecli("upload", *hostile_files).exit_code == 0
    # A second path for one content: the list of paths must stay unambiguous.
    twin = hostile_files[4].with_name("twin;b,c.png")
    twin.write_bytes(hostile_files[4].read_bytes())
    assert ecli("upload", twin).exit_code == 0
    out = ecli("ls", "--csv").stdout
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert len(rows) == len(hostile_files)
    found = {os.path.basename(p) for r in rows for p in json.loads(r["paths"])}
    assert found == {*(os.path.basename(str(p)) for p in hostile_files), "twin;b,c.png"}
    both = next(r for r in rows if len(json.loads(r["paths"])) == 2)
    assert sorted(map(os.path.basename, json.loads(both["paths"]))) == [
        "semi;colon,comma.png",
        "twin;b,c.png",
    ]
    assert "cr\\rlast.png" in out  # inside the JSON array: no raw CR splits a row


def test_json_maps_a_non_utf8_name_back_to_the_file(
    ecli: EmulatorCLI, hostile_files: list[Path], tmp_path: Path
) -> None:
    target = os.fsencode(hostile_files[3])
    uploaded = json.loads(ecli("upload", "--json", *hostile_files).stdout)
    sources = [os.fsencode(r["source"]) for r in uploaded["results"]]
    assert target in sources
    listed = json.loads(ecli("ls", "--json").stdout)
    assert target in {os.fsencode(p) for e in listed for p in e["paths"]}
    status = json.loads(ecli("status", "-a", "--json", tmp_path / "imgs").stdout)
    assert target in {os.fsencode(f["path"]) for f in status["files"]}
    # A literal backslash name is another file: the two never collide.
    lookalike = tmp_path / "imgs" / "caf\\xe9.png"
    lookalike.write_bytes(make_png(77))
    both = json.loads(ecli("upload", "--json", hostile_files[3], lookalike).stdout)
    assert len({r["source"] for r in both["results"]}) == 2
