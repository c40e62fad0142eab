"""``assetcache export`` and ``assetcache import``: moving a cache to another machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import EmulatorCLI
from helpers import write_images


@pytest.fixture
def ecli(tmp_path: Path) -> EmulatorCLI:
    return EmulatorCLI(tmp_path)


def test_export_then_import_elsewhere(ecli: EmulatorCLI, tmp_path: Path) -> None:
    write_images(tmp_path / "img", 1, 2, 3)
    ecli("upload", tmp_path / "img")
    exported = ecli("export")
    assert exported.exit_code == 0 and "exported 3 entries" in exported.stderr
    lines = exported.stdout.splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert set(first) == {
        "v",
        "namespace",
        "hash",
        "variant",
        "uuid",
        "size",
        "format",
        "uploaded_at",
        "last_used_at",
        "upload_count",
        "bytes_sent",
        "url",  # the imageURL the upload answer carried
    }
    assert first["url"].startswith("http")
    out_file = tmp_path / "entries.jsonl"
    assert ecli("export", "-o", out_file).exit_code == 0
    assert out_file.read_text().splitlines() == lines

    other = EmulatorCLI(tmp_path / "other")
    (tmp_path / "other").mkdir()
    result = other("import", "--json", out_file)
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"added": 3, "replaced": 0, "kept": 0, "errors": []}
    assert sorted(e["uuid"] for e in json.loads(other("ls", "--json").stdout)) == sorted(
        json.loads(line)["uuid"] for line in lines
    )
    again = other("import", "-", input=out_file.read_text())
    assert again.exit_code == 0 and "0 added, 0 replaced, 3 kept" in again.stderr


def test_import_never_replaces_a_fresher_entry(ecli: EmulatorCLI, tmp_path: Path) -> None:
    (a,) = write_images(tmp_path, 1)
    ecli("upload", a)
    old_line = ecli("export").stdout
    ecli.advance(days=31)
    fresh = json.loads(ecli("upload", "--json", a).stdout)["results"][0]
    assert fresh["outcome"] == "reuploaded"
    result = ecli("import", "--json", "-", input=old_line)
    assert json.loads(result.stdout)["kept"] == 1
    assert [e["uuid"] for e in json.loads(ecli("ls", "--json").stdout)] == [fresh["uuid"]]


def test_import_refuses_malformed_lines_with_line_numbers(
    ecli: EmulatorCLI, tmp_path: Path
) -> None:
    (a,) = write_images(tmp_path, 1)
    ecli("upload", a)
    good = ecli("export").stdout.strip()
    ecli("forget", a)
    bad_uuid = json.dumps({**json.loads(good), "uuid": "not-a-uuid"})
    source = tmp_path / "mixed.jsonl"
    source.write_bytes("\n".join(["garbage", good, "", bad_uuid, "[]"]).encode() + b"\n\xff\n")
    result = ecli("import", source)
    assert result.exit_code == 1
    assert f"{source}: line 1: not valid JSON" in result.stderr
    assert "line 4: 'uuid' is not a UUID" in result.stderr
    assert "line 5: expected a JSON object" in result.stderr
    assert "line 6: not UTF-8" in result.stderr
    assert "1 added" in result.stderr and "4 malformed line(s) refused" in result.stderr
    errors = json.loads(ecli("import", "--json", source).stdout)["errors"]
    assert [e["line"] for e in errors] == [1, 4, 5, 6]
    assert "Traceback" not in result.output


def test_import_missing_file_is_a_usage_error(ecli: EmulatorCLI, tmp_path: Path) -> None:
    result = ecli("import", tmp_path / "nope.jsonl")
    assert result.exit_code == 2 and "nope.jsonl" in result.stderr
