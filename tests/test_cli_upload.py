"""``assetcache upload`` and ``assetcache status``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import EmulatorCLI, invoke
from helpers import API_KEY, make_png, write_images

from assetcache import _cli
from assetcache.emulator import Emulator


@pytest.fixture
def ecli(tmp_path: Path) -> EmulatorCLI:
    return EmulatorCLI(tmp_path)


def test_upload_prints_uuids_and_a_summary(ecli: EmulatorCLI, tmp_path: Path) -> None:
    write_images(tmp_path / "img", 1, 2, 3)
    (tmp_path / "img" / "copy.png").write_bytes(make_png(1))
    first = ecli("upload", tmp_path / "img")
    assert first.exit_code == 0
    lines = first.stdout.splitlines()
    assert len(lines) == 4 and all(len(line.split("\t")) == 3 for line in lines)
    assert "4 file(s): 3 uploaded, 0 re-uploaded, 1 from cache, 0 failed" in first.stderr
    assert " sent" in first.stderr and " saved" in first.stderr
    second = ecli("upload", tmp_path / "img")
    assert "0 uploaded, 0 re-uploaded, 4 from cache" in second.stderr
    assert "0 B sent" in second.stderr
    assert {line.split("\t")[1] for line in lines} == {
        line.split("\t")[1] for line in second.stdout.splitlines()
    }


def test_upload_json_has_results_and_summary(ecli: EmulatorCLI, tmp_path: Path) -> None:
    (a,) = write_images(tmp_path, 1)
    out = json.loads(ecli("upload", "--json", a).stdout)
    (res,) = out["results"]
    assert set(res) >= {
        "source",
        "uuid",
        "outcome",
        "hash",
        "size",
        "format",
        "bytes_sent",
        "error",
    }
    assert res["outcome"] == "uploaded" and res["size"] == len(make_png(1))
    assert out["summary"] == {
        "files": 1,
        "hit": 0,
        "uploaded": 1,
        "reuploaded": 0,
        "failed": 0,
        "bytes_sent": res["bytes_sent"],
        "bytes_saved": 0,
    }
    again = json.loads(ecli("upload", "--json", a).stdout)
    assert again["summary"]["bytes_saved"] == len(make_png(1))
    assert again["summary"]["bytes_sent"] == 0


def test_upload_exit_code_1_when_some_fail_and_the_rest_carry_on(
    ecli: EmulatorCLI, tmp_path: Path
) -> None:
    (good,) = write_images(tmp_path, 1)
    bad = tmp_path / "broken.png"
    bad.write_bytes(make_png(2)[:30])
    result = ecli("upload", good, bad, tmp_path / "missing.png")
    assert result.exit_code == 1
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert rows[0][2] == "uploaded"
    assert rows[1][2].startswith("failed: ") and "PNG" in rows[1][2]
    assert rows[2][2] == "failed: no such file"
    assert "Traceback" not in result.output


def test_upload_glob_and_concurrency(ecli: EmulatorCLI, tmp_path: Path) -> None:
    write_images(tmp_path / "img", 1, 2)
    (tmp_path / "img" / "keep.gif.png").write_bytes(make_png(3))
    (tmp_path / "img" / "notes.txt").write_text("x")
    result = ecli("upload", "--glob", "*.gif.png", "--concurrency", "2", tmp_path / "img")
    assert result.exit_code == 0
    assert [line.split("\t")[0].rsplit("/", 1)[1] for line in result.stdout.splitlines()] == [
        "keep.gif.png"
    ]
    nothing = ecli("upload", "--glob", "*.jpg", tmp_path / "img")
    assert nothing.exit_code == 2 and "no image files" in nothing.stderr
    assert ecli("upload", "--concurrency", "0", tmp_path / "img").exit_code == 2


def test_upload_dry_run_sends_nothing(ecli: EmulatorCLI, tmp_path: Path) -> None:
    a, b = write_images(tmp_path, 1, 2)
    ecli("upload", a)
    dry = ecli("upload", "--dry-run", a, b)
    assert dry.exit_code == 0
    assert [line.split("\t")[2] for line in dry.stdout.splitlines()] == ["hit", "would be uploaded"]
    assert "1 would be uploaded" in dry.stderr and "to send" in dry.stderr
    as_json = json.loads(ecli("upload", "--dry-run", "--json", a, b).stdout)
    assert as_json["dry_run"] is True
    assert [r["outcome"] for r in as_json["results"]] == ["hit", "uploaded"]
    assert as_json["results"][1]["uuid"] is None
    real = ecli("upload", "--json", b)
    assert json.loads(real.stdout)["results"][0]["outcome"] == "uploaded"  # dry run sent nothing


def test_upload_without_a_key_is_a_usage_error(tmp_path: Path) -> None:
    (a,) = write_images(tmp_path, 1)
    result = invoke("--db", tmp_path / "c.db", "upload", a)
    assert result.exit_code == 2
    assert "RUNWARE_API_KEY" in result.stderr and "--emulator" in result.stderr


def test_upload_with_key_file_and_bad_key_file(emu: Emulator, tmp_path: Path) -> None:
    (a,) = write_images(tmp_path, 1)
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    ok = invoke(
        "--db",
        tmp_path / "c.db",
        "--api-url",
        emu.base_url,
        "--api-key-file",
        key_file,
        "upload",
        a,
    )
    assert ok.exit_code == 0 and emu.upload_count == 1
    assert API_KEY not in ok.output
    missing = invoke("--db", tmp_path / "c.db", "--api-key-file", tmp_path / "nope", "upload", a)
    assert missing.exit_code == 2 and "--api-key-file" in missing.stderr


def test_upload_shows_progress_only_on_a_terminal(
    ecli: EmulatorCLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_images(tmp_path / "img", 1, 2)
    quiet = ecli("upload", tmp_path / "img")
    assert "uploading" not in quiet.stderr
    monkeypatch.setattr(_cli, "stderr_is_tty", lambda: True)
    loud = ecli("upload", tmp_path / "img")
    assert "uploading" in loud.stderr
    assert len(loud.stdout.splitlines()) == 2  # the bar never lands on stdout


def test_upload_in_chunks_keeps_order(
    ecli: EmulatorCLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_cli, "UPLOAD_CHUNK", 2)
    paths = write_images(tmp_path / "img", *range(1, 6))
    result = ecli("upload", "--json", *paths)
    assert [r["source"] for r in json.loads(result.stdout)["results"]] == [str(p) for p in paths]


# -- status ------------------------------------------------------------------------


def test_status_reports_each_state(ecli: EmulatorCLI, tmp_path: Path) -> None:
    folder = tmp_path / "img"
    a, b, c, d = write_images(folder, 1, 2, 3, 4)
    ecli("upload", a, b, c)
    ecli.advance(days=27)
    ecli("upload", c)  # within the window: a hit, does not renew
    c.write_bytes(make_png(33))
    b.unlink()
    out = json.loads(ecli("status", "--json", folder).stdout)
    states = {Path(f["path"]).name: f["state"] for f in out["files"]}
    assert states == {
        "img-01.png": "expiring",
        "img-02.png": "missing",
        "img-03.png": "changed",
        "img-04.png": "new",
    }
    first = next(f for f in out["files"] if f["path"].endswith("img-01.png"))
    assert 0 < first["time_left_seconds"] < 3 * 86400 and first["uuid"]
    assert first["expires_at"].endswith("Z")
    assert out["summary"]["expiring"] == 1 and out["summary"]["new"] == 1
    text = ecli("status", folder)
    assert text.exit_code == 0
    assert any(line.startswith("expiring") and "1d" in line for line in text.stdout.splitlines())
    ecli.advance(days=3)
    assert json.loads(ecli("status", "--json", a).stdout)["files"][0]["state"] == "expired"


def test_status_check_exit_code(ecli: EmulatorCLI, tmp_path: Path) -> None:
    (a,) = write_images(tmp_path, 1)
    ecli("upload", a)
    assert ecli("status", "--check", a).exit_code == 0
    # A tracked file that is gone needs attention; a path never tracked is a typo.
    b = tmp_path / "b.png"
    b.write_bytes(a.read_bytes() + b"\0")
    ecli("upload", b)
    b.unlink()
    assert ecli("status", "--check", a, b).exit_code == 1
    typo = ecli("status", "--check", a, tmp_path / "gone.png")
    assert typo.exit_code == 2 and "no such file or folder" in typo.stderr
    quiet = ecli("status", a)  # like git status: fresh files are only counted
    assert quiet.stdout == "" and "1 file(s): 1 fresh" in quiet.stderr
    assert "--all lists the fresh ones" in quiet.stderr
    fresh = ecli("status", "--all", a)
    assert fresh.stdout.startswith("fresh") and "28d23h" in fresh.stdout


def test_status_defaults_to_the_current_folder(
    ecli: EmulatorCLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_images(tmp_path / "img", 1, 2)
    ecli("upload", tmp_path / "img")
    monkeypatch.chdir(tmp_path / "img")
    result = ecli("status", "-a")
    assert [line.split()[-1] for line in result.stdout.splitlines()] == ["img-01.png", "img-02.png"]
    assert "2 fresh" in result.stderr
