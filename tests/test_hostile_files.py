"""Files the cache writes and reads on an operator's word: ``export -o`` and ``import``.

``export -o FILE`` writes through an exclusive temporary file (mode 0600
whatever the umask) renamed into place: a planted symlink is never written
through, and the live database (or its -wal/-shm) is never overwritten.
``import`` refuses each malformed line by number and imports the rest, reads
lines with a bound, and ends an endless input with one clear error.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from cli_support import EmulatorCLI
from helpers import write_images

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX files")


@pytest.fixture
def ecli(tmp_path: Path) -> EmulatorCLI:
    return EmulatorCLI(tmp_path)


@pytest.fixture
def exported(ecli: EmulatorCLI, tmp_path: Path) -> list[dict]:
    assert ecli("upload", *write_images(tmp_path / "img", 1, 2, 3)).exit_code == 0
    lines = ecli("export").stdout.splitlines()
    assert len(lines) == 3
    return [json.loads(line) for line in lines]


def entries(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return conn.execute("SELECT count(*) FROM assets").fetchone()[0]
    finally:
        conn.close()


def test_export_file_is_private_whatever_the_umask(
    ecli: EmulatorCLI, exported: list[dict], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    old = os.umask(0)
    try:
        result = ecli("export", "-o", out)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o600
    assert len(out.read_text().splitlines()) == 3
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_export_never_writes_through_a_planted_symlink(
    ecli: EmulatorCLI, exported: list[dict], tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out.jsonl"
    # Symlinks at every name a predictable temporary file could have.
    for name in (f"out.jsonl.tmp-{os.getpid()}", "out.jsonl.tmp", "out.jsonl~", ".out.jsonl"):
        (tmp_path / name).symlink_to(victim)
    result = ecli("export", "-o", out)
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious\n"
    # A symlink at FILE itself is replaced by the export, its target untouched.
    link = tmp_path / "link.jsonl"
    link.symlink_to(victim)
    assert ecli("export", "-o", link).exit_code == 0
    assert victim.read_text() == "precious\n"
    assert not link.is_symlink() and len(link.read_text().splitlines()) == 3


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm", "@link"])
def test_export_refuses_to_overwrite_the_live_database(
    ecli: EmulatorCLI, exported: list[dict], tmp_path: Path, suffix: str
) -> None:
    if suffix == "@link":
        target = tmp_path / "innocent.jsonl"
        target.symlink_to(ecli.db)
    else:
        target = Path(f"{ecli.db}{suffix}")
    result = ecli("export", "-o", target)
    assert result.exit_code == 2, result.output
    assert "live database" in result.stderr
    assert "Traceback" not in result.output
    assert entries(ecli.db) == 3


def test_import_refuses_each_malformed_line_by_number(
    ecli: EmulatorCLI, exported: list[dict], tmp_path: Path
) -> None:
    good = exported[0]
    bad_lines = {
        "deep nesting": "[" * 100_000 + "]" * 100_000,
        "deep object": '{"a":' * 50_000 + "1" + "}" * 50_000,
        "size 1e30": json.dumps({**good, "size": 1e30}),
        "size 2**63": json.dumps({**good, "size": 2**63}),
        "upload_count 2**64": json.dumps({**good, "upload_count": 2**64}),
        "bytes_sent -1": json.dumps({**good, "bytes_sent": -1}),
        "last_used_at 1e400": json.dumps(good).replace(
            f'"last_used_at": {json.dumps(good["last_used_at"])}', '"last_used_at": 1e400'
        ),
        "uploaded_at 1e30": json.dumps({**good, "uploaded_at": 1e30}),
        "size as string": json.dumps({**good, "size": "12"}),
        "size true": json.dumps({**good, "size": True}),
        "uuid number": json.dumps({**good, "uuid": 12}),
        "hash trailing newline": json.dumps({**good, "hash": good["hash"] + "\n"}),
        "uuid trailing space": json.dumps({**good, "uuid": good["uuid"] + " "}),
        "namespace trailing tab": json.dumps({**good, "namespace": good["namespace"] + "\t"}),
        "variant control": json.dumps({**good, "variant": "x\x1b[2J"}),
        "huge integer text": '{"size": ' + "9" * 5000 + "}",
        "a list": "[1, 2]",
        "a number": "42",
        "not JSON": "{nope",
        "not UTF-8": b"\xff\xfe{}".decode("latin-1"),
    }
    lines = [json.dumps(exported[1])]
    for text in bad_lines.values():
        lines.append(text)
    lines.append(json.dumps(exported[2]))
    source = tmp_path / "in.jsonl"
    source.write_bytes(
        b"\n".join(
            line.encode("latin-1") if line.startswith("\xff") else line.encode() for line in lines
        )
        + b"\n"
    )
    fresh = EmulatorCLI(tmp_path / "other")
    (tmp_path / "other").mkdir()
    result = fresh("import", "--json", source)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    report = json.loads(result.stdout)
    assert report["added"] == 2
    refused = {e["line"] for e in report["errors"]}
    assert refused == set(range(2, 2 + len(bad_lines))), report["errors"]
    assert entries(fresh.db) == 2


def test_import_refuses_an_overlong_line_and_goes_on(
    ecli: EmulatorCLI, exported: list[dict], tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    long_line = json.dumps({**exported[0], "pad": "x" * (4 << 20)})
    source.write_text("\n".join([long_line, json.dumps(exported[1])]) + "\n")
    (tmp_path / "other").mkdir()
    fresh = EmulatorCLI(tmp_path / "other")
    result = fresh("import", "--json", source)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["added"] == 1
    assert [e["line"] for e in report["errors"]] == [1]
    assert "longer than" in report["errors"][0]["reason"]


@pytest.mark.timeout(60)
def test_import_of_an_endless_input_ends_in_one_clear_error(tmp_path: Path) -> None:
    ecli = EmulatorCLI(tmp_path)
    result = ecli("import", "/dev/zero")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "MemoryError" not in result.output
    errors = [line for line in result.stderr.splitlines() if "line 1" in line]
    assert len(errors) >= 1 and any("no end of line" in e for e in errors)
