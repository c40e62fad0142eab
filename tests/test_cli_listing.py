"""``assetcache ls`` and ``assetcache stats``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from cli_support import EmulatorCLI, invoke
from helpers import API_KEY, make_png, write_images

from assetcache._config import account_fingerprint
from assetcache.emulator import Emulator

ENTRY_FIELDS = {
    "hash",
    "uuid",
    "size",
    "format",
    "uploaded_at",
    "last_used_at",
    "expires_at",
    "serve_until",
    "state",
    "paths",
    "upload_count",
    "namespace",
}


@pytest.fixture
def ecli(tmp_path: Path) -> EmulatorCLI:
    return EmulatorCLI(tmp_path)


def test_ls_json_has_the_documented_fields(ecli: EmulatorCLI, tmp_path: Path) -> None:
    a, b = write_images(tmp_path / "img", 1, 2)
    (tmp_path / "img" / "copy.png").write_bytes(make_png(1))
    uploaded = json.loads(ecli("upload", "--json", tmp_path / "img").stdout)["results"]
    result = ecli("ls", "--json")
    assert result.exit_code == 0
    entries = json.loads(result.stdout)
    assert len(entries) == 2 and all(set(e) == ENTRY_FIELDS for e in entries)
    by_uuid = {e["uuid"]: e for e in entries}
    first = by_uuid[uploaded[0]["uuid"]]
    assert first["hash"] == uploaded[0]["hash"] and first["format"] == "png"
    assert first["size"] == len(make_png(1)) and first["state"] == "fresh"
    assert sorted(Path(p).name for p in first["paths"]) == ["copy.png", "img-01.png"]
    assert first["expires_at"] > first["serve_until"] > first["last_used_at"]


def test_ls_filters(ecli: EmulatorCLI, tmp_path: Path) -> None:
    a, b = write_images(tmp_path, 1, 2)
    ecli("upload", a)
    ecli.advance(days=10)
    ecli("upload", b)
    ecli.advance(days=18)  # a: served one more day; b: 11 more

    def uuids(*args: str) -> list[str]:
        return [e["paths"][0] for e in json.loads(ecli("ls", "--json", *args).stdout)]

    assert uuids("--expiring-within", "2d") == [str(a)]
    assert uuids("--expiring-within", "12d") == [str(a), str(b)]
    assert uuids("--expired") == []
    ecli.advance(days=2)
    assert uuids("--expired") == [str(a)]
    assert uuids("--expiring-within", "2d") == []
    assert uuids("--expiring-within", "20d", "--expired") == [str(a), str(b)]
    assert uuids() == [str(a), str(b)]  # soonest to expire first


def test_ls_bad_duration_is_a_usage_error(ecli: EmulatorCLI) -> None:
    result = ecli("ls", "--expiring-within", "soon")
    assert result.exit_code == 2
    assert "invalid duration 'soon'" in result.stderr and "30d" in result.stderr


def test_ls_csv_parses(ecli: EmulatorCLI, tmp_path: Path) -> None:
    write_images(tmp_path / "img", 1, 2)
    (tmp_path / "img" / "copy.png").write_bytes(make_png(1))
    ecli("upload", tmp_path / "img")
    result = ecli("ls", "--csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 2 and set(rows[0]) == ENTRY_FIELDS
    both = next(r for r in rows if ";" in r["paths"])
    assert sorted(Path(p).name for p in both["paths"].split(";")) == ["copy.png", "img-01.png"]
    assert all(int(r["size"]) > 0 for r in rows)
    assert ecli("ls", "--csv", "--json").exit_code == 2


def test_ls_text_table(ecli: EmulatorCLI, tmp_path: Path) -> None:
    (a,) = write_images(tmp_path, 1)
    uuid = json.loads(ecli("upload", "--json", a).stdout)["results"][0]["uuid"]
    result = ecli("ls")
    header, row = result.stdout.splitlines()
    assert header.split() == [
        "HASH",
        "UUID",
        "SIZE",
        "FORMAT",
        "LAST",
        "USED",
        "EXPIRES",
        "STATE",
        "PATHS",
    ]
    assert uuid in row and "png" in row and "in 29d23h" in row and "fresh" in row
    assert "1 entries" in result.stderr


def test_ls_without_a_key_lists_every_account(emu: Emulator, tmp_path: Path) -> None:
    (a,) = write_images(tmp_path, 1)
    db = tmp_path / "c.db"
    keyed = {"RUNWARE_API_KEY": API_KEY}
    assert invoke("--db", db, "--api-url", emu.base_url, "upload", a, env=keyed).exit_code == 0
    assert invoke("--db", db, "--emulator", "ls", "--json").stdout.strip() == "[]"
    everyone = json.loads(invoke("--db", db, "ls", "--json").stdout)
    assert len(everyone) == 1
    assert everyone[0]["namespace"].endswith("#" + account_fingerprint(API_KEY))
    assert (
        len(json.loads(invoke("--db", db, "--emulator", "ls", "--json", "--all-accounts").stdout))
        == 1
    )


def test_stats(ecli: EmulatorCLI, tmp_path: Path) -> None:
    a, b = write_images(tmp_path, 1, 2)
    ecli("upload", a, b)
    ecli("upload", a, b)
    ecli.advance(days=31)
    ecli("upload", a)
    result = ecli("stats", "--json")
    assert result.exit_code == 0
    s = json.loads(result.stdout)
    assert set(s) == {
        "entries",
        "bytes",
        "files",
        "hits",
        "misses",
        "uploads",
        "reuploads",
        "failures",
        "retries",
        "bytes_sent",
        "bytes_saved",
        "db_path",
        "db_bytes",
        "copies",
    }
    assert (s["entries"], s["hits"], s["uploads"], s["reuploads"]) == (2, 2, 3, 1)
    assert s["bytes_saved"] == len(make_png(1)) + len(make_png(2))
    assert s["bytes"] == s["bytes_saved"] and s["db_bytes"] > 0
    text = ecli("stats").stdout
    assert "re-uploads    1" in text and "bytes saved" in text and str(ecli.db) in text
