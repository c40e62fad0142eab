"""``assetcache doctor``: health, settings, the account fingerprint, rebuilding."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from cli_support import EmulatorCLI, invoke
from helpers import API_KEY, write_images

from assetcache._config import account_fingerprint
from assetcache.emulator import Emulator

DOCTOR_FIELDS = {
    "db_path",
    "exists",
    "db_bytes",
    "schema_version",
    "schema_supported",
    "integrity",
    "entries",
    "files",
    "problems",
    "actions",
    "lost",
    "account",
    "namespace",
    "settings",
    "needs_rebuild",
    "ok",
}


def test_doctor_shows_the_fingerprint_never_the_key(emu: Emulator, tmp_path: Path) -> None:
    (a,) = write_images(tmp_path, 1)
    db = tmp_path / "cache.db"
    env = {"RUNWARE_API_KEY": API_KEY}
    base = ("--db", db, "--api-url", emu.base_url)
    outputs = [invoke(*base, "upload", a, env=env), invoke(*base, "-vv", "upload", a, env=env)]
    text = invoke(*base, "doctor", env=env)
    as_json = invoke(*base, "doctor", "--json", env=env)
    outputs += [text, as_json]
    assert text.exit_code == 0 and as_json.exit_code == 0
    fingerprint = account_fingerprint(API_KEY)
    assert f"account    {fingerprint}" in text.stdout
    assert "integrity  ok" in text.stdout and "healthy" in text.stderr
    report = json.loads(as_json.stdout)
    assert set(report) == DOCTOR_FIELDS
    assert report["account"] == fingerprint and report["ok"] is True
    assert report["entries"] == 1 and report["schema_version"] == report["schema_supported"]
    assert report["settings"]["api_url"] == emu.base_url
    assert report["settings"]["retention_seconds"] == 30 * 86400
    for result in outputs:
        assert API_KEY not in result.output
    for path in tmp_path.iterdir():
        if path.name.startswith("cache.db"):
            assert API_KEY.encode() not in path.read_bytes(), path


def test_doctor_on_garbage_reports_and_fix_rebuilds(tmp_path: Path) -> None:
    db = tmp_path / "cache.db"
    db.write_bytes(b"definitely not sqlite\n" * 500)
    ecli = EmulatorCLI(tmp_path)
    blocked = ecli("ls")
    assert blocked.exit_code == 2 and "doctor --fix" in blocked.stderr
    found = ecli("doctor")
    assert found.exit_code == 1
    assert "not a readable SQLite database" in found.stdout
    assert "assetcache doctor --fix" in found.stderr
    assert "Traceback" not in found.output
    fixed = ecli("doctor", "--fix")
    assert fixed.exit_code == 0, fixed.output
    assert "moved the damaged database to" in fixed.stdout
    assert "lost:      unknown" in fixed.stdout
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"definitely not sqlite")
    assert ecli("doctor").exit_code == 0
    (a,) = write_images(tmp_path / "img", 1)
    assert ecli("upload", a).exit_code == 0


def test_doctor_fix_json_reports_what_was_lost(tmp_path: Path) -> None:
    db = tmp_path / "cache.db"
    db.write_bytes(b"\x00" * 100 + b"garbage" * 100)
    result = invoke("--db", db, "doctor", "--fix", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["lost"].startswith("unknown")
    assert report["account"] is None
    assert [a.split()[0] for a in report["actions"]] == ["found:", "moved", "created"]


def test_doctor_does_not_create_a_missing_database(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "cache.db"
    result = invoke("--db", db, "doctor")
    assert result.exit_code == 0 and "not created yet" in result.stdout
    assert not db.exists()


def test_doctor_refuses_to_rebuild_a_newer_schema(tmp_path: Path) -> None:
    db = tmp_path / "cache.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    result = invoke("--db", db, "doctor", "--fix")
    assert result.exit_code == 2
    assert "newer assetcache" in result.stdout
    assert not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
