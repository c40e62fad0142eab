"""``assetcache refresh``, ``prune``, ``verify`` and ``forget``."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from cli_support import EmulatorCLI
from helpers import make_png, write_images


@pytest.fixture
def ecli(tmp_path: Path) -> EmulatorCLI:
    return EmulatorCLI(tmp_path)


def table(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


def uuid_of(ecli: EmulatorCLI, path: Path) -> str:
    return str(json.loads(ecli("upload", "--json", path).stdout)["results"][0]["uuid"])


# -- refresh ---------------------------------------------------------------------------


def test_refresh_renews_and_reports_what_it_could_not(ecli: EmulatorCLI, tmp_path: Path) -> None:
    a, b, c = write_images(tmp_path, 1, 2, 3)
    old = {p.name: uuid_of(ecli, p) for p in (a, b, c)}
    ecli.advance(days=28.5)
    b.unlink()
    c.write_bytes(make_png(30))
    result = ecli("refresh", "--within", "2d", "--json")
    assert result.exit_code == 1  # some could not be refreshed
    report = json.loads(result.stdout)
    assert report["summary"] == {"renewed": 1, "would-renew": 0, "content-gone": 2, "failed": 0}
    items = {i["old_uuid"]: i for i in report["items"]}
    assert set(items[old["img-01.png"]]) == {
        "hash",
        "old_uuid",
        "status",
        "uuid",
        "path",
        "reason",
        "expires_at",
    }
    renewed = items[old["img-01.png"]]
    assert renewed["status"] == "renewed" and renewed["uuid"] != old["img-01.png"]
    assert "no such file" in items[old["img-02.png"]]["reason"]
    assert "changed" in items[old["img-03.png"]]["reason"]
    # Renewed: a caller now hits without uploading, and nothing is left to do in the window.
    hit = json.loads(ecli("upload", "--json", a).stdout)["results"][0]
    assert (hit["outcome"], hit["uuid"]) == ("hit", renewed["uuid"])
    assert items[old["img-02.png"]]["reported_before"] is False
    # Cron the next night: the gone content was reported already; nothing needs you.
    again = ecli("refresh", "--within", "2d")
    assert again.exit_code == 0, again.output
    assert "0 renewed, 0 failed, 0 content gone (+2 reported before)" in again.stderr
    assert again.stdout == ""
    listed = json.loads(ecli("refresh", "--within", "2d", "--json").stdout)
    assert {i["reported_before"] for i in listed["items"]} == {True}
    # More content goes missing: that is news again (exit 1), reported once.
    a.unlink()
    ecli.advance(days=28.5)
    news = ecli("refresh", "--within", "2d")
    assert news.exit_code == 1 and news.stdout.startswith("content-gone")
    assert ecli("refresh", "--within", "2d").exit_code == 0
    assert ecli("refresh", "--within", "2d", "--ignore-gone").exit_code == 0


def test_refresh_all_good_exits_0_and_dry_run_sends_nothing(
    ecli: EmulatorCLI, tmp_path: Path
) -> None:
    (a,) = write_images(tmp_path, 1)
    old = uuid_of(ecli, a)
    assert ecli("refresh", "--within", "2d").exit_code == 0  # nothing due
    ecli.advance(days=28.5)
    dry = ecli("refresh", "--within", "2d", "--dry-run")
    assert dry.exit_code == 0 and dry.stdout.startswith("would-renew")
    assert "1 would be renewed" in dry.stderr
    assert [r[0] for r in table(ecli.db, "SELECT image_uuid FROM assets")] == [old]
    done = ecli("refresh", "--within", "2d")
    assert done.exit_code == 0 and done.stdout.startswith("renewed")
    assert [r[0] for r in table(ecli.db, "SELECT image_uuid FROM assets")] != [old]


def test_refresh_needs_a_valid_window(ecli: EmulatorCLI) -> None:
    assert ecli("refresh").exit_code == 2
    bad = ecli("refresh", "--within", "2 days")
    assert bad.exit_code == 2 and "invalid duration" in bad.stderr


# -- prune ------------------------------------------------------------------------------


def test_prune_dry_run_changes_nothing(ecli: EmulatorCLI, tmp_path: Path) -> None:
    a, b = write_images(tmp_path, 1, 2)
    ecli("upload", a, b)
    ecli.advance(days=31)
    b.unlink()
    before = (
        table(ecli.db, "SELECT * FROM assets ORDER BY 2"),
        table(ecli.db, "SELECT * FROM files ORDER BY 1"),
    )
    dry = ecli("prune", "--dry-run", "--json")
    assert dry.exit_code == 0
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True
    assert report["summary"]["entries"] == 2 and report["files"] == [str(b)]
    assert (
        table(ecli.db, "SELECT * FROM assets ORDER BY 2"),
        table(ecli.db, "SELECT * FROM files ORDER BY 1"),
    ) == before
    text = ecli("prune")
    assert text.exit_code == 0 and "dropped 2 entries" in text.stderr
    assert table(ecli.db, "SELECT count(*) FROM assets") == [(0,)]
    assert [os.fsdecode(r[0]) for r in table(ecli.db, "SELECT path FROM files")] == [str(a)]


def test_prune_older_than(ecli: EmulatorCLI, tmp_path: Path) -> None:
    a, b = write_images(tmp_path, 1, 2)
    ecli("upload", a)
    ecli.advance(days=10)
    ecli("upload", b)
    ecli.advance(days=5)
    assert json.loads(ecli("prune", "--json").stdout)["summary"]["entries"] == 0
    out = json.loads(ecli("prune", "--older-than", "1w", "--json").stdout)
    assert [e["paths"] for e in out["entries"]] == [[str(a)]]
    assert [e["paths"] for e in json.loads(ecli("ls", "--json").stdout)] == [[str(b)]]


# -- verify -----------------------------------------------------------------------------


def test_verify_reports_and_fixes(ecli: EmulatorCLI, tmp_path: Path) -> None:
    a, b, c = write_images(tmp_path / "img", 1, 2, 3)
    ecli("upload", tmp_path / "img")
    b.write_bytes(make_png(20))
    c.unlink()
    result = ecli("verify", "--json")
    assert result.exit_code == 0
    out = json.loads(result.stdout)
    states = {Path(f["path"]).name: f["state"] for f in out["files"]}
    assert states == {"img-01.png": "ok", "img-02.png": "changed", "img-03.png": "missing"}
    assert out["summary"]["changed"] == 1 and set(out["files"][0]) == {
        "path",
        "state",
        "old_hash",
        "new_hash",
        "reason",
    }
    # Fixed as it went: a second pass finds everything fine.
    again = ecli("verify")
    assert again.stdout == "" and "2 file(s): 2 ok" in again.stderr
    text = ecli("verify", tmp_path / "img" / "nope.png")  # a typo: neither there nor tracked
    assert text.exit_code == 2 and "no such file or folder" in text.stderr


def test_verify_unreadable_file_exit_1(
    ecli: EmulatorCLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (a,) = write_images(tmp_path, 1)
    ecli("upload", a)
    a.chmod(0)
    if os.geteuid() == 0:
        # Root reads any file: make the open fail as it would for anyone else.
        real_open = os.open

        def denied(path, *args, **kwargs):  # type: ignore[no-untyped-def]
            if os.fsdecode(path) == str(a):
                raise PermissionError(13, "Permission denied", str(a))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", denied)
    try:
        result = ecli("verify")
    finally:
        a.chmod(0o644)
    assert result.exit_code == 1 and result.stdout.startswith("unreadable")


def test_verify_path_turned_folder_exit_1(ecli: EmulatorCLI, tmp_path: Path) -> None:
    """A tracked path that became a folder cannot be hashed: reported, exit 1."""
    (a,) = write_images(tmp_path, 1)
    ecli("upload", a)
    a.unlink()
    a.mkdir()
    result = ecli("verify")
    assert result.exit_code == 1
    assert result.stdout.startswith("unreadable") and "regular file" in result.stdout


# -- forget -----------------------------------------------------------------------------


def test_forget_by_path_hash_and_uuid(ecli: EmulatorCLI, tmp_path: Path) -> None:
    a, b, c = write_images(tmp_path, 1, 2, 3)
    results = json.loads(ecli("upload", "--json", a, b, c).stdout)["results"]
    result = ecli("forget", "--json", a, results[1]["hash"], results[2]["uuid"])
    assert result.exit_code == 0
    out = json.loads(result.stdout)
    assert [(o["kind"], o["entries"][0]["uuid"]) for o in out] == [
        ("path", results[0]["uuid"]),
        ("hash", results[1]["uuid"]),
        ("uuid", results[2]["uuid"]),
    ]
    assert table(ecli.db, "SELECT count(*) FROM assets") == [(0,)]
    again = json.loads(ecli("upload", "--json", a).stdout)["results"][0]
    assert again["outcome"] == "uploaded" and again["uuid"] != results[0]["uuid"]


def test_forget_unknown_item_exit_1(ecli: EmulatorCLI, tmp_path: Path) -> None:
    (a,) = write_images(tmp_path, 1)
    ecli("upload", a)
    result = ecli("forget", a, "0" * 32, "not-a-thing")
    assert result.exit_code == 1
    assert result.stdout.startswith("forgot\t")
    assert "no cache entry for " + "0" * 32 in result.stderr
    assert "not-a-thing: not an existing or tracked path" in result.stderr
    assert ecli("forget").exit_code == 2


def test_long_commands_show_progress_only_on_a_terminal(
    ecli: EmulatorCLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from assetcache import _cli

    write_images(tmp_path / "img", 1, 2)
    ecli("upload", tmp_path / "img")
    ecli.advance(days=28.5)
    assert "verifying" not in ecli("verify").stderr
    monkeypatch.setattr(_cli, "stderr_is_tty", lambda: True)
    assert "verifying" in ecli("verify").stderr
    refreshed = ecli("refresh", "--within", "2d")
    assert "refreshing" in refreshed.stderr and refreshed.exit_code == 0
    assert [line.split("\t")[0] for line in refreshed.stdout.splitlines()] == ["renewed"] * 2
