"""Output for scripts and people: streaming lines, JSON lines, porcelain, invalid
files, ignore rules, hash prefixes, dry-run duplicates, -v decisions, warnings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_support import EmulatorCLI, script
from helpers import API_KEY, make_png, write_images

from assetcache.emulator import Emulator


@pytest.fixture
def ecli(tmp_path: Path) -> EmulatorCLI:
    return EmulatorCLI(tmp_path)


def folder_with_junk(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    write_images(root, 1, 2)
    (root / "notes.txt").write_text("not an image\n")
    (root / "empty.png").write_bytes(b"")
    return root


def test_status_calls_files_that_can_never_upload_invalid(ecli, tmp_path):
    root = folder_with_junk(tmp_path)
    assert ecli("upload", root).exit_code == 1  # empty.png failed
    done = ecli("status", "--json", root)
    data = json.loads(done.stdout)
    states = {Path(f["path"]).name: (f["state"], f["reason"]) for f in data["files"]}
    assert states["notes.txt"][0] == "invalid" and "not an image" in states["notes.txt"][1]
    assert states["empty.png"] == ("invalid", "empty file")
    assert data["summary"]["invalid"] == 2 and data["summary"]["new"] == 0
    # Every file that can upload is fresh: --check passes.
    assert ecli("status", "--check", root).exit_code == 0
    text = ecli("status", root).stdout
    assert "invalid" in text and "(empty file)" in text


def test_porcelain_and_nul_terminated(ecli, tmp_path):
    root = folder_with_junk(tmp_path)
    odd = root / "tab\there.png"
    odd.write_bytes(make_png(9))
    result = ecli("status", "--porcelain", "-z", root)
    assert result.exit_code == 0 and result.stderr == ""
    records = result.stdout.split("\0")
    assert records[-1] == ""
    parsed = dict(r.split("\t", 1)[::-1] for r in records[:-1])
    assert parsed[str(odd)] == "new"
    assert parsed[str(root / "notes.txt")] == "invalid"
    lines = ecli("status", "--porcelain", root).stdout.splitlines()
    assert all(line.split("\t")[0] in {"new", "invalid"} for line in lines)
    assert ecli("status", "-z", root).exit_code == 2  # -z goes with --porcelain


def test_nl_on_upload_status_and_refresh(ecli, tmp_path):
    root = folder_with_junk(tmp_path)
    lines = [json.loads(x) for x in ecli("upload", "--nl", root).stdout.splitlines()]
    assert [x.get("outcome") for x in lines[:-1]].count("uploaded") == 2
    assert lines[-1]["summary"]["uploaded"] == 2
    status = [json.loads(x) for x in ecli("status", "--nl", "-a", root).stdout.splitlines()]
    assert status[-1]["summary"]["fresh"] == 2
    assert {x["state"] for x in status[:-1]} == {"fresh", "invalid"}
    ecli.advance(days=28.5)
    refresh = [json.loads(x) for x in ecli("refresh", "--within", "2d", "--nl").stdout.splitlines()]
    assert {x["status"] for x in refresh} == {"renewed"}


def test_exclude_and_ignore_file(ecli, tmp_path):
    root = tmp_path / "photos"
    write_images(root, 1, 2, 3)
    (root / "drafts").mkdir()
    write_images(root / "drafts", 4)
    (root / ".assetcacheignore").write_text("drafts/\n")
    done = ecli("upload", "--exclude", "img-02.png", root)
    assert done.exit_code == 0
    uploaded = {Path(line.split("\t")[0]).name for line in done.stdout.splitlines()}
    assert uploaded == {"img-01.png", "img-03.png"}
    status = json.loads(ecli("status", "--json", "-a", "--exclude", "img-02.png", root).stdout)
    assert {Path(f["path"]).name for f in status["files"]} == {"img-01.png", "img-03.png"}
    assert status["summary"]["fresh"] == 2
    # Without the exclude img-02 is new; the ignore file still hides the drafts.
    status = json.loads(ecli("status", "--json", root).stdout)
    names = {Path(f["path"]).name for f in status["files"]}
    assert "img-02.png" in names and "img-04.png" not in names and ".assetcacheignore" not in names


def test_forget_takes_a_hash_prefix(ecli, tmp_path):
    a, b = write_images(tmp_path, 1, 2)
    ecli("upload", a, b)
    entries = json.loads(ecli("ls", "--json").stdout)
    digest = entries[0]["hash"]
    short = ecli("forget", digest[:7])
    assert short.exit_code == 1  # fewer than 8 digits: not a hash prefix
    done = ecli("forget", digest[:12])
    assert done.exit_code == 0, done.output
    assert len(json.loads(ecli("ls", "--json").stdout)) == 1
    none = ecli("forget", "deadbeefdeadbeef")
    assert none.exit_code == 1 and "no entry" in none.output


def test_dry_run_does_not_call_an_in_batch_duplicate_a_hit(ecli, tmp_path):
    (a,) = write_images(tmp_path, 1)
    copy = tmp_path / "copy.png"
    copy.write_bytes(a.read_bytes())
    dry = ecli("upload", "--dry-run", "--json", a, copy)
    outcomes = [r["outcome"] for r in json.loads(dry.stdout)["results"]]
    assert outcomes == ["uploaded", "duplicate"]
    summary = json.loads(dry.stdout)["summary"]
    assert summary["hit"] == 0 and summary["bytes_saved"] == 0
    text = ecli("upload", "--dry-run", a, copy)
    assert "duplicate" in text.stdout and "from cache" in text.stderr


def test_reimporting_the_same_export_replaces_nothing(ecli, tmp_path):
    write_images(tmp_path / "in", 1, 2, 3)
    ecli("upload", tmp_path / "in")
    export = tmp_path / "e.jsonl"
    assert ecli("export", "-o", export).exit_code == 0
    other = tmp_path / "other.db"
    first = ecli("--db", other, "import", "--json", export)
    second = ecli("--db", other, "import", "--json", export)
    again = json.loads(second.stdout)
    assert json.loads(first.stdout)["added"] == 3
    assert again["added"] == 0 and again["replaced"] == 0 and again["kept"] == 3


def test_verbose_says_why(ecli, tmp_path):
    (a,) = write_images(tmp_path, 1)
    first = ecli("-v", "upload", a)
    assert "hashing: not in the file index" in first.stderr
    assert "uploading: new content" in first.stderr
    time.sleep(0)  # the racy window is measured from the hash time, not slept through
    os.utime(a, ns=(time.time_ns(), time.time_ns()))  # touched: stat data differs
    second = ecli("-v", "upload", a)
    assert "changed since it was hashed" in second.stderr or "racily clean" in second.stderr
    assert "hit by content" in second.stderr
    ecli.advance(days=40)
    third = ecli("-v", "upload", a)
    assert "re-uploading" in third.stderr and "expired" in third.stderr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    fourth = ecli("-v", "upload", bad)
    assert "skipped: not an image" in fourth.stderr
    assert API_KEY not in first.stderr + second.stderr + third.stderr + fourth.stderr


def test_upload_writes_each_batch_as_it_answers(tmp_path):
    """A real process, read line by line: the first batch's lines arrive while the
    second batch is still waiting on the server (held there by the test)."""
    import threading

    from assetcache._cli import UPLOAD_CHUNK

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(UPLOAD_CHUNK + 3):
        (folder / f"p{i:04d}.png").write_bytes(make_png(50_000 + i))
    release = threading.Event()
    with Emulator(api_key=API_KEY) as emu:
        real = emu.handle_api
        count = [0]

        def handle(body, authorization):  # type: ignore[no-untyped-def]
            count[0] += 1
            if count[0] > -(-UPLOAD_CHUNK // 16):  # the second batch waits for the test
                assert release.wait(60)
            return real(body, authorization)

        emu.handle_api = handle  # type: ignore[method-assign]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSETCACHE_", "RUNWARE_"))}
        env.update(RUNWARE_API_KEY=API_KEY, ASSETCACHE_CONFIG="")
        proc = subprocess.Popen(
            [script(), "--db", str(tmp_path / "c.db"), "--api-url", emu.base_url, "upload", folder],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout is not None
            first = [proc.stdout.readline() for _ in range(UPLOAD_CHUNK)]
            assert all(line.endswith("\tuploaded\n") for line in first)
            assert proc.poll() is None  # still running: the lines came before the end
        finally:
            release.set()
        rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert rest.count("\tuploaded") == 3


def test_a_big_image_without_pillow_is_announced_once(tmp_path):
    big = [tmp_path / "a.png", tmp_path / "b.png"]
    for i, path in enumerate(big):
        path.write_bytes(make_png(i, 2100, 4))
    code = (
        "import sys; sys.modules['PIL'] = None\n"
        "from assetcache._cli import main\n"
        f"sys.argv = ['assetcache', '--emulator', '--db', {str(tmp_path / 'c.db')!r}, 'upload',"
        f" {str(big[0])!r}, {str(big[1])!r}]\n"
        "main()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSETCACHE_", "RUNWARE_"))}
    env["ASSETCACHE_CONFIG"] = ""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("Pillow is not installed") == 1
    assert "pip install 'assetcache[images]'" in done.stderr and "2100x4" in done.stderr


def test_an_entry_as_json_is_its_dict_as_json_dumps_writes_it() -> None:
    """``ls --json`` writes ``Entry.as_json()``: byte for byte the encoding of ``as_dict()``."""
    from assetcache._models import Entry

    dumps = json.JSONEncoder(default=str).encode
    entries = [
        Entry(
            'ns\u00e9"x',
            "h\\1",
            "",
            "u\x00",
            5,
            "p\u00f1g",
            1.5,
            1e9,
            2e9,
            1.9e9,
            "fresh",
            ("/a/\u00e9\udcff.png", "b\n"),
            2,
            3,
            1700000000.9,
        ),
        Entry("n", "h", "v", "u", 2**70, "png", 0.0, 0.0, 0.0, 0.0, "expired", (), True, 0),
        Entry("n", "h", "v", "u", 3.5, "png", 0.0, 0.0, 0.0, 0.0, "expired", (), 1, 0),  # type: ignore[arg-type]
    ]
    for entry in entries:
        assert entry.as_json() == dumps(entry.as_dict())
