"""The command line and the bundled emulator: time you can move, state you can see,
several processes on one database, and one-line errors instead of tracebacks."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from cli_support import CLEAN_ENV, EmulatorCLI, invoke, run_script, script
from helpers import make_png, sigint_default

from assetcache.emulator import Emulator

DAY = 86400


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def states(status_stdout: str) -> dict[str, tuple[str, str]]:
    """``status`` lines -> {file name: (state, time left)}."""
    found = {}
    for line in lines(status_stdout):
        state, left, path = line.split(None, 2)
        found[Path(path).name] = (state, left)
    return found


# ------------------------------------------------------------ the 40-day story


def test_forty_days_driven_by_commands_only(tmp_path: Path):
    """upload, advance, status, ls, refresh: what each prints as time passes."""
    images = tmp_path / "images"
    images.mkdir()
    for seed, name in enumerate("abcd"):
        (images / f"{name}.png").write_bytes(make_png(seed + 40))
    run = EmulatorCLI(tmp_path / "db")
    (tmp_path / "db").mkdir()
    path = {name: images / f"{name}.png" for name in "abcd"}

    # Day 0: three uploads.
    day0 = run("upload", path["a"], path["b"], path["c"])
    assert day0.exit_code == 0, day0.output
    uploaded = {
        Path(p).name: (u, how) for p, u, how in (ln.split("\t") for ln in lines(day0.stdout))
    }
    assert {name: how for name, (_, how) in uploaded.items()} == {
        "a.png": "uploaded",
        "b.png": "uploaded",
        "c.png": "uploaded",
    }
    assert "3 uploaded" in day0.stderr
    now = states(run("status", "-a", images).stdout)
    assert now["a.png"][0] == now["b.png"][0] == now["c.png"][0] == "fresh"
    assert re.fullmatch(r"28d2[23]h", now["a.png"][1]), now
    assert now["d.png"] == ("new", "-")

    # Day 5: one more file.
    moved = run("advance", "5d")
    assert moved.exit_code == 0 and moved.stdout.strip().endswith("(moved 5d)"), moved.output
    assert run("upload", path["d"]).stdout.strip().endswith("uploaded")

    # Day 25: the first three are about to expire, d is not.
    assert run("advance", "20d").exit_code == 0
    now = states(run("status", "-a", images).stdout)
    assert {n: s for n, (s, _) in now.items()} == dict.fromkeys(now, "fresh")
    assert re.fullmatch(r"3d2[23]h", now["a.png"][1]) and re.fullmatch(r"8d2[23]h", now["d.png"][1])
    renewed = run("refresh", "--within", "7d")
    assert renewed.exit_code == 0, renewed.output
    renewed_names = sorted(Path(ln.split("\t")[-1]).name for ln in lines(renewed.stdout))
    assert renewed_names == ["a.png", "b.png", "c.png"]
    assert all(ln.startswith("renewed\t") for ln in lines(renewed.stdout))
    assert "3 renewed" in renewed.stderr
    now = states(run("status", "-a", images).stdout)
    assert re.fullmatch(r"28d2[23]h", now["b.png"][1]) and re.fullmatch(
        r"8d2[23]h", now["d.png"][1]
    )

    # Day 40: d was never used again and Runware deleted it on day 35.
    assert run("advance", "15d").exit_code == 0
    now = states(run("status", "-a", images).stdout)
    assert now["d.png"] == ("expired", "-")
    assert now["a.png"][0] == "fresh" and re.fullmatch(r"13d2[23]h", now["a.png"][1])
    listed = json.loads(run("ls", "--json").stdout)
    by_state = {Path(e["paths"][0]).name: e["state"] for e in listed}
    assert by_state == {"a.png": "fresh", "b.png": "fresh", "c.png": "fresh", "d.png": "expired"}
    table = run("ls").stdout
    assert re.search(r"expired\s+\S*d\.png", table) and "35d ago" in table

    seen = json.loads(run("emulator-status", "--json").stdout)
    held = {image["uuid"] for image in seen["images"]}
    assert {e["uuid"] for e in listed if e["state"] == "fresh"} == held
    assert seen["counters"]["upload_count"] == 7  # 3 + 1 + 3 renewals
    assert seen["clock"] == pytest.approx(time.time() + 40 * DAY, abs=600)

    # The next use uploads d again.
    again = run("upload", path["d"])
    assert again.stdout.strip().endswith("reuploaded") and "1 re-uploaded" in again.stderr
    text = run("emulator-status").stdout
    assert re.search(r"^held\s+4 uploaded, 0 generated$", text, re.M), text
    assert re.search(r"^counters\s+8 uploads", text, re.M), text


# ------------------------------------------------------ advance / emulator-status


def test_advance_and_status_reach_a_running_emulator_through_api_url(tmp_path: Path):
    with Emulator(api_key=None, start_time=1_000_000.0, frozen=True) as emu:
        url = ["--api-url", emu.base_url, "--db", tmp_path / "c.db"]
        moved = invoke(*url, "advance", "31d", "--json")
        assert moved.exit_code == 0, moved.output
        assert json.loads(moved.stdout)["clock"] == 1_000_000.0 + 31 * DAY == emu.clock()
        uploaded = httpx.post(
            emu.base_url,
            headers={"Authorization": "Bearer k"},
            json=[
                {
                    "taskType": "imageUpload",
                    "taskUUID": "0f9c5a4e-8b7d-4c3b-9a1e-2d3f4a5b6c7d",
                    "image": "data:image/png;base64,"
                    + __import__("base64").b64encode(make_png(9)).decode(),
                }
            ],
        ).json()["data"][0]["imageUUID"]
        shown = invoke(*url, "emulator-status", "--json")
        info = json.loads(shown.stdout)
        assert [i["uuid"] for i in info["images"]] == [uploaded]
        assert info["counters"]["upload_count"] == 1
        text = invoke(*url, "emulator-status").stdout
        assert uploaded in text and re.search(r"^held\s+1 uploaded", text, re.M)


def test_advance_without_an_emulator_says_how_to_name_one(tmp_path: Path):
    result = invoke("--db", tmp_path / "c.db", "advance", "1d")
    assert result.exit_code == 2
    assert "--emulator" in result.stderr and "--api-url" in result.stderr


def test_advance_against_something_that_is_not_an_emulator(tmp_path: Path):
    with Emulator(api_key=None) as emu:
        # A server without the control endpoint under that root.
        result = invoke(
            "--api-url", emu.base_url + "/nested", "--db", tmp_path / "c", "advance", "1d"
        )
    # The control endpoint is found from the URL's root, so this still works.
    assert result.exit_code == 0, result.output
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gone = invoke("--api-url", f"http://127.0.0.1:{port}/v1", "advance", "1d")
    assert gone.exit_code == 2 and len(lines(gone.output)) == 1
    assert "cannot reach the emulator" in gone.stderr


@pytest.mark.parametrize("bad", ["5x", "-3d", ""])
def test_advance_refuses_a_bad_duration_in_one_line(tmp_path: Path, bad: str):
    result = EmulatorCLI(tmp_path)("advance", bad)
    assert result.exit_code == 2 and len(lines(result.output)) == 1, result.output
    assert "Traceback" not in result.output


# ------------------------------------------------ several processes, one database


def _upload_in_parallel(tmp_path: Path, processes: int) -> None:
    db = tmp_path / "shared.db"
    folders = []
    for p in range(processes):
        folder = tmp_path / f"batch{p}"
        folder.mkdir()
        for i in range(3):
            (folder / f"{i}.png").write_bytes(make_png(1000 * processes + 10 * p + i))
        folders.append(folder)

    def one(folder: Path) -> subprocess.CompletedProcess[str]:
        return run_script("--emulator", "--db", db, "upload", folder)

    with ThreadPoolExecutor(processes) as pool:
        results = list(pool.map(one, folders))
    for result in results:
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
    uuids = {line.split("\t")[1] for result in results for line in lines(result.stdout)}
    assert len(uuids) == 3 * processes
    state = Emulator(api_key=None, state_path=f"{db}.emulator.json")
    held = {image.uuid for image in state.images()}
    assert uuids <= held, f"lost from the emulator state: {sorted(uuids - held)}"
    assert state.persisted_counters()["upload_count"] == 3 * processes
    listed = run_script("--emulator", "--db", db, "ls", "--json")
    assert {e["uuid"] for e in json.loads(listed.stdout)} == uuids


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 8])
def test_concurrent_emulator_runs_on_one_database_lose_no_upload(tmp_path: Path, processes: int):
    _upload_in_parallel(tmp_path, processes)


# ------------------------------------------------------------- no tracebacks


def _bad_states(tmp_path: Path) -> dict[str, Path]:
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"version": 2, "clock": ')
    other = tmp_path / "other-version.json"
    other.write_text(json.dumps({"version": 99, "clock": {"now": 0, "wall": 0}, "images": []}))
    unreadable = tmp_path / "unreadable.json"
    unreadable.mkdir()  # a directory: unreadable as a file, even for root
    return {"corrupt": corrupt, "other version": other, "unreadable": unreadable}


def assert_one_line_exit_2(code: int, stdout: str, stderr: str, *words: str) -> None:
    text = stdout + stderr
    assert code == 2, text
    assert "Traceback" not in text
    assert len(lines(stderr)) == 1 and not lines(stdout), text
    for word in words:
        assert word in stderr, text


@pytest.mark.parametrize("case", ["corrupt", "other version", "unreadable"])
def test_every_emulator_command_reports_a_bad_state_file_in_one_line(tmp_path: Path, case: str):
    bad = _bad_states(tmp_path)[case]
    # --emulator keeps its state at <db>.emulator.json: put the bad file there.
    db = tmp_path / "cache.db"
    target = Path(f"{db}.emulator.json")
    if bad.is_dir():
        target.mkdir()
    else:
        target.write_bytes(bad.read_bytes())
    image = tmp_path / "x.png"
    image.write_bytes(make_png(5))
    for args in (
        ["upload", image],
        ["status", tmp_path],
        ["ls"],
        ["refresh", "--within", "2d"],
        ["stats"],
        ["verify"],
        ["prune"],
        ["export"],
        ["doctor"],
        ["advance", "1d"],
        ["emulator-status"],
    ):
        result = invoke("--emulator", "--db", db, *args)
        assert_one_line_exit_2(result.exit_code, result.stdout, result.stderr, str(target))
    for runner in (
        [script(), "emulator", "--port", "0", "--state"],
        [sys.executable, "-m", "assetcache.emulator", "--state"],
    ):
        done = subprocess.run(
            [*runner, str(bad)], capture_output=True, text=True, timeout=60, env=_env()
        )
        assert_one_line_exit_2(done.returncode, done.stdout, done.stderr, str(bad))


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "70000"],
        ["--port", "-1"],
        ["--port", "many"],
        ["--latency", "-2"],
        ["--fault-rate", "1.5"],
        ["--media-placeholder", "-1"],
        ["--no-such-option"],
    ],
)
@pytest.mark.parametrize("entry", ["assetcache emulator", "python -m assetcache.emulator"])
def test_out_of_range_options_are_one_line(args: list[str], entry: str):
    command = (
        [script(), "emulator"]
        if entry == "assetcache emulator"
        else [
            sys.executable,
            "-m",
            "assetcache.emulator",
        ]
    )
    done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, env=_env())
    assert_one_line_exit_2(done.returncode, done.stdout, done.stderr)
    option = args[0]
    assert option in done.stderr or option.lstrip("-") in done.stderr, done.stderr


@pytest.mark.parametrize("entry", ["assetcache emulator", "python -m assetcache.emulator"])
def test_a_busy_port_is_one_line(entry: str):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        command = (
            [script(), "emulator"]
            if entry == "assetcache emulator"
            else [
                sys.executable,
                "-m",
                "assetcache.emulator",
            ]
        )
        done = subprocess.run(
            [*command, "--port", str(port)], capture_output=True, text=True, timeout=60, env=_env()
        )
    assert_one_line_exit_2(done.returncode, done.stdout, done.stderr, str(port), "in use")


# ------------------------------------------------------- a standalone emulator


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    proc = subprocess.Popen(
        [script(), "emulator", "--port", "0", "--state", str(tmp_path / "emu.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        preexec_fn=sigint_default,
    )
    try:
        assert proc.stdout is not None
        printed = [proc.stdout.readline().strip() for _ in range(3)]
        yield proc, printed
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_port_zero_picks_a_free_port_and_prints_every_url(
    standalone: tuple[subprocess.Popen[str], list[str]], tmp_path: Path
):
    proc, printed = standalone
    rest = re.fullmatch(r"listening on (http://127\.0\.0\.1:(\d+)/v1)", printed[0])
    assert rest, printed
    port = int(rest[2])
    assert port != 0
    assert printed[1] == f"websocket    ws://127.0.0.1:{port}/v1"
    assert printed[2] == f"control      http://127.0.0.1:{port}/_emulator/status"
    answer = httpx.get(f"http://127.0.0.1:{port}/_emulator/status", timeout=10)
    assert answer.status_code == 200 and answer.json()["images"] == []
    moved = invoke("--api-url", rest[1], "advance", "2d", "--json")
    assert moved.exit_code == 0, moved.output
    assert json.loads(moved.stdout)["clock"] == pytest.approx(time.time() + 2 * DAY, abs=600)
    # The Date header follows the emulator's clock, so a client sees the skew.
    date = httpx.get(f"http://127.0.0.1:{port}/_emulator/stats").headers["Date"]
    from email.utils import parsedate_to_datetime

    assert parsedate_to_datetime(date).timestamp() == pytest.approx(time.time() + 2 * DAY, abs=600)
    assert proc.poll() is None
