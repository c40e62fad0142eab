"""The proxy: any Runware client gets the cache by pointing its URL at it.

The emulator is the upstream; clients are plain httpx (and, in
``tests/sdk/``, the official SDKs) that know nothing of the cache.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import API_KEY, make_png, sigint_default

from assetcache import Proxy
from assetcache.emulator import Emulator

OTHER_KEY = "second-account-key-SECRET"


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def upload_task(image: str) -> dict[str, str]:
    return {"taskType": "imageUpload", "taskUUID": str(uuid.uuid4()), "image": image}


def post(proxy: Proxy, tasks: list[dict], key: str = API_KEY) -> httpx.Response:
    return httpx.post(
        proxy.base_url, json=tasks, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


@pytest.fixture
def upstream() -> Iterator[Emulator]:
    with Emulator(api_key={API_KEY, OTHER_KEY}) as emu:
        yield emu


@pytest.fixture
def proxy(upstream: Emulator, tmp_path: Path) -> Iterator[Proxy]:
    with Proxy(
        upstream=upstream.base_url,
        db_path=tmp_path / "proxy.db",
        cache_options={"clock": upstream.clock},
    ) as p:
        yield p


def test_a_repeated_upload_is_answered_from_the_cache_with_the_clients_task_uuid(
    proxy: Proxy, upstream: Emulator
) -> None:
    image = data_uri(make_png(1))
    first, second = upload_task(image), upload_task(image)
    a = post(proxy, [first]).json()["data"][0]
    b = post(proxy, [second]).json()["data"][0]
    assert a["taskUUID"] == first["taskUUID"] and b["taskUUID"] == second["taskUUID"]
    assert a["imageUUID"] == b["imageUUID"]
    assert upstream.holds(a["imageUUID"])
    assert upstream.upload_count == 1
    assert proxy.savings.uploads_answered == 1


def test_two_client_processes_cause_one_upstream_upload(
    proxy: Proxy, upstream: Emulator, tmp_path: Path
) -> None:
    image = tmp_path / "img.png"
    image.write_bytes(make_png(2))
    client = (
        "import base64, sys, uuid, httpx\n"
        "raw = open(sys.argv[2], 'rb').read()\n"
        "uri = 'data:image/png;base64,' + base64.b64encode(raw).decode()\n"
        "task = {'taskType': 'imageUpload', 'taskUUID': str(uuid.uuid4()), 'image': uri}\n"
        "auth = {'Authorization': 'Bearer ' + sys.argv[3]}\n"
        "r = httpx.post(sys.argv[1], json=[task], headers=auth)\n"
        "print(r.json()['data'][0]['imageUUID'])\n"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", client, proxy.base_url, str(image), API_KEY],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        for _ in range(2)
    ]
    uuids = {run.stdout.strip() for run in runs}
    assert len(uuids) == 1
    assert upstream.upload_count == 1


def test_another_key_gets_its_own_upload(proxy: Proxy, upstream: Emulator) -> None:
    image = data_uri(make_png(3))
    mine = post(proxy, [upload_task(image)]).json()["data"][0]["imageUUID"]
    theirs = post(proxy, [upload_task(image)], key=OTHER_KEY).json()["data"][0]["imageUUID"]
    assert mine != theirs
    assert upstream.upload_count == 2


def test_a_wrong_key_gets_the_servers_own_refusal(proxy: Proxy) -> None:
    reply = post(proxy, [upload_task(data_uri(make_png(4)))], key="not-a-key")
    assert reply.status_code == 401
    assert reply.json()["errors"][0]["code"] == "invalidApiKey"


def test_a_url_and_a_bad_image_pass_through_to_the_server(proxy: Proxy, upstream: Emulator) -> None:
    bad = upload_task("data:image/png;base64," + base64.b64encode(b"not an image").decode())
    reply = post(proxy, [bad])
    assert reply.status_code == 400
    assert reply.json()["errors"][0]["taskUUID"] == bad["taskUUID"]
    assert upstream.request_count == 1  # the server saw it, and answered itself


def test_a_batch_mixing_cached_uploads_and_other_tasks_gets_every_answer(
    proxy: Proxy, upstream: Emulator
) -> None:
    image = data_uri(make_png(5))
    post(proxy, [upload_task(image)])
    cached, fresh = upload_task(image), upload_task(data_uri(make_png(6)))
    body = post(proxy, [cached, fresh]).json()
    assert {d["taskUUID"] for d in body["data"]} == {cached["taskUUID"], fresh["taskUUID"]}
    assert upstream.upload_count == 2


def test_a_mediastorage_upload_is_answered_in_its_own_shape(
    proxy: Proxy, upstream: Emulator
) -> None:
    media = base64.b64encode(make_png(7)).decode()
    tasks = [
        {
            "taskType": "mediaStorage",
            "taskUUID": str(uuid.uuid4()),
            "operation": "upload",
            "media": media,
        }
        for _ in range(2)
    ]
    first = post(proxy, [tasks[0]]).json()["data"][0]
    second = post(proxy, [tasks[1]]).json()["data"][0]
    assert second["operation"] == "upload" and second["taskUUID"] == tasks[1]["taskUUID"]
    assert first["mediaUUID"] == second["mediaUUID"]
    assert upstream.upload_count == 1


def test_what_is_not_json_reaches_the_server_as_it_was_sent(
    proxy: Proxy, upstream: Emulator
) -> None:
    reply = httpx.post(
        proxy.base_url,
        content=b"{not json",
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    assert reply.status_code == 400
    assert upstream.request_count == 1


def test_an_oversized_body_is_refused_before_it_is_read(upstream: Emulator, tmp_path: Path) -> None:
    with Proxy(upstream=upstream.base_url, db_path=tmp_path / "p.db", max_body=1000) as proxy:
        reply = post(proxy, [upload_task(data_uri(make_png(8, 64, 64)) + "A" * 2000)])
    assert reply.status_code == 413
    assert "cap" in reply.json()["errors"][0]["message"]
    assert upstream.request_count == 0


def test_an_unreachable_upstream_is_a_clear_502(tmp_path: Path) -> None:
    with Emulator(api_key=API_KEY) as gone:
        url = gone.base_url
    with Proxy(upstream=url, db_path=tmp_path / "p.db") as proxy:
        reply = post(proxy, [{"taskType": "ping", "taskUUID": str(uuid.uuid4())}])
    assert reply.status_code == 502
    assert "cannot be reached" in reply.json()["errors"][0]["message"]


def test_the_key_is_never_logged_nor_stored(
    proxy: Proxy, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    post(proxy, [upload_task(data_uri(make_png(9)))])
    post(proxy, [upload_task(data_uri(make_png(9)))], key="wrong-SECRET-key")
    assert API_KEY not in caplog.text and "wrong-SECRET-key" not in caplog.text
    for path in tmp_path.glob("proxy.db*"):
        assert API_KEY.encode() not in path.read_bytes()


def test_the_upstream_is_fixed_by_configuration_not_by_the_client(
    proxy: Proxy, upstream: Emulator
) -> None:
    reply = httpx.post(
        proxy.base_url.replace("/v1", "/elsewhere"),
        json=[upload_task(data_uri(make_png(10)))],
        headers={"Authorization": f"Bearer {API_KEY}", "Host": "evil.example"},
    )
    assert reply.status_code == 404
    assert upstream.request_count == 0


def test_credentials_in_the_upstream_url_are_refused(tmp_path: Path) -> None:
    from assetcache import ConfigurationError

    with pytest.raises(ConfigurationError, match="credentials"):
        Proxy(upstream="https://user:secret@api.example/v1", db_path=tmp_path / "p.db")


def test_a_busy_port_is_one_clear_error(proxy: Proxy, tmp_path: Path) -> None:
    from assetcache import ConfigurationError

    with pytest.raises(ConfigurationError, match="cannot listen"):
        Proxy(upstream=proxy.upstream, port=proxy.port, db_path=tmp_path / "q.db").start()


def test_answers_from_the_cache_report_what_they_saved(proxy: Proxy) -> None:
    image = data_uri(make_png(11))
    for _ in range(3):
        post(proxy, [upload_task(image)])
    assert proxy.savings.as_dict()["uploads_answered"] == 2
    assert proxy.savings.bytes_not_sent == 2 * len(make_png(11))
    assert json.loads(json.dumps(proxy.savings.as_dict()))["uploads_sent"] == 1


# -- WebSocket ---------------------------------------------------------------


def ws_exchange(ws: object, tasks: list[dict], want: int) -> list[dict]:
    """Send one frame of tasks; collect ``want`` result or error objects."""
    ws.send(json.dumps(tasks))  # type: ignore[attr-defined]
    got: list[dict] = []
    while len(got) < want:
        frame = json.loads(ws.recv(timeout=30))  # type: ignore[attr-defined]
        got += frame.get("data", []) + frame.get("errors", [])
    return got


def test_websocket_uploads_are_answered_from_the_cache(proxy: Proxy, upstream: Emulator) -> None:
    from websockets.sync.client import connect

    image = data_uri(make_png(20))
    with connect(proxy.ws_url) as ws:
        (auth,) = ws_exchange(ws, [{"taskType": "authentication", "apiKey": API_KEY}], 1)
        assert auth["connectionSessionUUID"]
        first, second = upload_task(image), upload_task(image)
        (a,) = ws_exchange(ws, [first], 1)
        (b,) = ws_exchange(ws, [second], 1)
        (pong,) = ws_exchange(ws, [{"taskType": "ping", "ping": True}], 1)
    assert a["taskUUID"] == first["taskUUID"] and b["taskUUID"] == second["taskUUID"]
    assert a["imageUUID"] == b["imageUUID"] and upstream.holds(a["imageUUID"])
    assert pong.get("pong") is True
    assert upstream.upload_count == 1


def test_websocket_sessions_resume_with_their_session_uuid(
    proxy: Proxy, upstream: Emulator
) -> None:
    from websockets.sync.client import connect

    with connect(proxy.ws_url) as ws:
        (auth,) = ws_exchange(ws, [{"taskType": "authentication", "apiKey": API_KEY}], 1)
    session = auth["connectionSessionUUID"]
    with connect(proxy.ws_url) as ws:
        (again,) = ws_exchange(
            ws,
            [{"taskType": "authentication", "apiKey": API_KEY, "connectionSessionUUID": session}],
            1,
        )
    assert again["connectionSessionUUID"] == session


def test_websocket_key_errors_come_from_the_server(proxy: Proxy) -> None:
    from websockets.sync.client import connect

    with connect(proxy.ws_url) as ws:
        (err,) = ws_exchange(ws, [{"taskType": "authentication", "apiKey": "nope"}], 1)
    assert err["code"] == "invalidApiKey"


# -- inline images in other tasks, and healing ---------------------------------------


def inference(**images: object) -> dict:
    return {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "positivePrompt": "a cat",
        "model": "runware:100@1",
        "width": 512,
        "height": 512,
        **images,
    }


def test_inline_images_reach_the_server_as_uuids_and_are_not_sent_again(
    proxy: Proxy, upstream: Emulator
) -> None:
    seed, refs = data_uri(make_png(30)), [data_uri(make_png(31)), data_uri(make_png(32))]
    first = inference(seedImage=seed, referenceImages=refs)
    reply = post(proxy, [first])
    assert reply.status_code == 200, reply.text
    assert {d["taskUUID"] for d in reply.json()["data"]} == {first["taskUUID"]}
    assert upstream.upload_count == 3
    upstream.reset_counters()
    again = post(proxy, [inference(seedImage=seed, referenceImages=refs)])
    assert again.status_code == 200
    assert upstream.upload_count == 0
    assert upstream.bytes_received < 2000  # UUIDs only: no image bytes went up


def test_a_lost_upload_is_healed_out_of_the_clients_sight(proxy: Proxy, upstream: Emulator) -> None:
    seed, ref = data_uri(make_png(33)), data_uri(make_png(34))
    post(proxy, [inference(seedImage=seed, referenceImages=[ref])])
    held = {image.uuid for image in upstream.images()}
    seed_uuid = post(proxy, [upload_task(seed)]).json()["data"][0]["imageUUID"]
    assert seed_uuid in held
    upstream.delete(seed_uuid)
    upstream.reset_counters()
    task = inference(seedImage=seed, referenceImages=[ref])
    reply = post(proxy, [task])
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert "errors" not in body
    assert [d["taskUUID"] for d in body["data"]] == [task["taskUUID"]]
    assert upstream.upload_count == 1  # only the lost one
    assert proxy.savings.healed == 1


def test_an_unrelated_error_reaches_the_client_unchanged(proxy: Proxy, upstream: Emulator) -> None:
    task = inference(seedImage=data_uri(make_png(35)))
    task["numberResults"] = 0
    reply = post(proxy, [task])
    assert reply.status_code == 400
    err = reply.json()["errors"][0]
    assert err["code"] == "invalidNumberResults" and err["taskUUID"] == task["taskUUID"]
    assert proxy.savings.healed == 0


def test_a_path_in_a_task_is_never_read_by_the_proxy(
    proxy: Proxy, upstream: Emulator, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(make_png(36))
    post(proxy, [inference(seedImage=str(secret))])
    assert upstream.upload_count == 0
    assert upstream.images() == []


def test_websocket_tasks_get_uuids_and_a_lost_upload_heals_unseen(
    proxy: Proxy, upstream: Emulator
) -> None:
    from websockets.sync.client import connect

    seed = data_uri(make_png(40))
    with connect(proxy.ws_url) as ws:
        ws_exchange(ws, [{"taskType": "authentication", "apiKey": API_KEY}], 1)
        first = inference(seedImage=seed)
        (result,) = ws_exchange(ws, [first], 1)
        assert result["taskUUID"] == first["taskUUID"] and "imageUUID" in result
        assert upstream.upload_count == 1
        (held,) = [image.uuid for image in upstream.images()]
        upstream.delete(held)
        second = inference(seedImage=seed)
        (healed,) = ws_exchange(ws, [second], 1)
    assert healed["taskUUID"] == second["taskUUID"]
    assert "code" not in healed  # a result, not an error
    assert upstream.upload_count == 2
    assert proxy.savings.healed == 1


# -- the command -------------------------------------------------------------


def start_cli_proxy(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "assetcache",
            "--db",
            str(tmp_path / "cli.db"),
            "--emulator",
            "proxy",
            "--port",
            "0",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith("listening on http://"), (
        line,
        proc.stderr.read() if proc.stderr else "",
    )
    ws = proc.stdout.readline().strip()
    assert ws.startswith("websocket on ws://")
    return proc, line.removeprefix("listening on ")


def test_the_command_serves_until_interrupted_and_stats_show_what_it_saved(
    tmp_path: Path,
) -> None:
    import signal

    proc, url = start_cli_proxy(tmp_path)
    try:
        image = data_uri(make_png(50))
        for _ in range(3):
            reply = httpx.post(
                url, json=[upload_task(image)], headers={"Authorization": "Bearer cli-key"}
            )
            assert reply.status_code == 200 and reply.json()["data"][0]["imageURL"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "2 upload(s) answered from the cache" in err
    assert "cli-key" not in err
    stats = subprocess.run(
        [sys.executable, "-m", "assetcache", "--db", str(tmp_path / "cli.db"), "stats", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in __import__("os").environ.items() if k != "RUNWARE_API_KEY"},
    )
    assert json.loads(stats.stdout)["proxy"]["uploads_answered"] == 2


def test_the_command_warns_when_it_listens_beyond_loopback(tmp_path: Path) -> None:
    import signal

    proc, _ = start_cli_proxy(tmp_path, "--host", "0.0.0.0")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert "warning: listening on 0.0.0.0" in err


def test_the_command_on_a_busy_port_is_one_line_exit_2(proxy: Proxy, tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "assetcache",
            "--db",
            str(tmp_path / "busy.db"),
            "proxy",
            "--port",
            str(proxy.port),
            "--upstream",
            proxy.upstream,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "cannot listen" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_a_database_the_cache_refuses_is_one_error_at_start(
    upstream: Emulator, tmp_path: Path
) -> None:
    from assetcache import ConfigurationError

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigurationError, match="writable by"):
        Proxy(upstream=upstream.base_url, db_path=shared / "p.db").start()
