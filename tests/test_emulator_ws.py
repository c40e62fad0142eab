"""The emulator's WebSocket endpoint, frame by frame, with a plain websockets client.

Runware's protocol as the official SDKs use it (``/work/shared/runware-api.md``,
"WebSocket transport"): an ``authentication`` task first, answered with a
``connectionSessionUUID``; JSON arrays of tasks; each result and each error
its own frame carrying its taskUUID; ``ping`` answered with ``pong``; a
reconnect that presents the session UUID receives what was buffered for it.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from helpers import make_png

pytest.importorskip("websockets")
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import ClientConnection, connect  # noqa: E402

from assetcache.emulator import Emulator  # noqa: E402

KEY = "ws-key"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(api_key=KEY, start_time=1_000_000.0, frozen=True) as emulator:
        yield emulator


def tid() -> str:
    return str(uuid.uuid4())


def recv(ws: ClientConnection) -> dict[str, Any]:
    frame = json.loads(ws.recv(timeout=10))
    assert isinstance(frame, dict)
    return frame


def send(ws: ClientConnection, *tasks: dict[str, Any]) -> None:
    ws.send(json.dumps(list(tasks)))


def authenticate(ws: ClientConnection, session: str | None = None, key: str = KEY) -> str:
    task: dict[str, Any] = {"taskType": "authentication", "apiKey": key}
    if session:
        task["connectionSessionUUID"] = session
    send(ws, task)
    (item,) = recv(ws)["data"]
    assert item["taskType"] == "authentication"
    return str(item["connectionSessionUUID"])


def upload_task(seed: int = 0) -> dict[str, Any]:
    data = base64.b64encode(make_png(seed)).decode()
    return {"taskType": "imageUpload", "taskUUID": tid(), "image": data}


def upload(ws: ClientConnection, seed: int = 0) -> str:
    send(ws, upload_task(seed))
    return str(recv(ws)["data"][0]["imageUUID"])


def test_authentication_answers_a_new_session_uuid(emu: Emulator):
    with connect(emu.ws_url) as first, connect(emu.ws_url) as second:
        one, two = authenticate(first), authenticate(second)
    assert UUID4.match(one) and UUID4.match(two) and one != two
    assert set(emu.ws_sessions()) == {one, two}
    assert emu.ws_connection_count == 2


def test_a_wrong_key_is_an_authentication_error_that_never_echoes_the_key(emu: Emulator):
    with connect(emu.ws_url) as ws:
        send(ws, {"taskType": "authentication", "apiKey": "wrong-secret-123"})
        frame = recv(ws)
        (error,) = frame["errors"]
        assert (error["code"], error["taskType"], error["parameter"]) == (
            "invalidApiKey",
            "authentication",
            "apiKey",
        )
        assert "wrong-secret-123" not in json.dumps(frame)
        task = upload_task()
        send(ws, task)  # still unauthenticated
        (refused,) = recv(ws)["errors"]
        assert (refused["code"], refused["taskUUID"]) == ("missingApiKey", task["taskUUID"])
    assert emu.upload_count == 0


def test_tasks_before_authentication_are_refused_each_with_its_task_uuid(emu: Emulator):
    first, second = upload_task(1), upload_task(2)
    with connect(emu.ws_url) as ws:
        send(ws, first, second)
        uuids = [recv(ws)["errors"][0]["taskUUID"] for _ in range(2)]
    assert uuids == [first["taskUUID"], second["taskUUID"]]


def test_authentication_and_tasks_may_share_the_first_message(emu: Emulator):
    with connect(emu.ws_url) as ws:
        send(ws, {"taskType": "authentication", "apiKey": KEY}, upload_task(3))
        assert recv(ws)["data"][0]["taskType"] == "authentication"
        assert emu.holds(recv(ws)["data"][0]["imageUUID"])


def test_ping_is_answered_with_pong(emu: Emulator):
    with connect(emu.ws_url) as ws:
        authenticate(ws)
        send(ws, {"taskType": "ping", "ping": True})
        assert recv(ws) == {"data": [{"taskType": "ping", "pong": True}]}


def test_each_result_and_each_error_is_its_own_frame_with_its_task_uuid(emu: Emulator):
    with connect(emu.ws_url) as ws:
        authenticate(ws)
        image = upload(ws, 4)
        good = {
            "taskType": "imageInference",
            "taskUUID": tid(),
            "positivePrompt": "x",
            "seedImage": image,
            "numberResults": 3,
        }
        bad = {"taskType": "imageUpscale", "taskUUID": tid(), "inputImage": str(uuid.uuid4())}
        send(ws, good, bad)
        frames = [recv(ws) for _ in range(4)]
    results = [f["data"][0] for f in frames[:3]]
    assert all(len(f.get("data", [])) == 1 and "errors" not in f for f in frames[:3])
    assert {r["taskUUID"] for r in results} == {good["taskUUID"]}
    assert len({r["imageUUID"] for r in results}) == 3
    (error,) = frames[3]["errors"]
    assert (error["code"], error["parameter"], error["taskUUID"]) == (
        "invalidInputImage",
        "inputImage",
        bad["taskUUID"],
    )


def test_a_deleted_controlnet_guide_is_refused_by_path(emu: Emulator):
    with connect(emu.ws_url) as ws:
        authenticate(ws)
        image = upload(ws, 5)
        assert emu.delete(image)
        task = {
            "taskType": "imageInference",
            "taskUUID": tid(),
            "positivePrompt": "x",
            "controlNet": [{"model": "m", "guideImage": image}],
        }
        send(ws, task)
        (error,) = recv(ws)["errors"]
    assert (error["code"], error["parameter"]) == ("invalidGuideImage", "controlNet[0].guideImage")


def test_async_delivery_acknowledges_then_get_response_answers(emu: Emulator):
    with connect(emu.ws_url) as ws:
        authenticate(ws)
        task = {
            "taskType": "imageInference",
            "taskUUID": tid(),
            "positivePrompt": "x",
            "deliveryMethod": "async",
        }
        send(ws, task)
        assert recv(ws) == {"data": [{"taskType": "imageInference", "taskUUID": task["taskUUID"]}]}
        send(ws, {"taskType": "getResponse", "taskUUID": task["taskUUID"]})
        (item,) = recv(ws)["data"]
    assert item["status"] == "success" and emu.holds(item["imageUUID"])


def test_a_reconnect_with_the_session_uuid_receives_the_buffered_results(emu: Emulator):
    with connect(emu.ws_url) as ws:
        session = authenticate(ws)
        emu.hang_up_next()
        task = upload_task(6)
        send(ws, task)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert emu.ws_sessions() == {session: 1}
    assert emu.upload_count == 1  # processed, only the answer was held back

    with connect(emu.ws_url) as again:
        assert authenticate(again, session) == session
        (item,) = recv(again)["data"]
    assert item["taskUUID"] == task["taskUUID"] and emu.holds(item["imageUUID"])
    assert emu.ws_sessions() == {session: 0} and emu.ws_replayed_count == 1

    with connect(emu.ws_url) as third:  # replayed once, not twice
        authenticate(third, session)
        send(third, {"taskType": "ping", "ping": True})
        assert recv(third)["data"][0]["taskType"] == "ping"


def test_an_unknown_or_foreign_session_gets_a_new_one(emu: Emulator):
    other_key = "second-account"
    with Emulator(api_key={KEY, other_key}) as shared:
        with connect(shared.ws_url) as ws:
            mine = authenticate(ws)
            shared.hang_up_next()
            send(ws, upload_task(7))
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
        with connect(shared.ws_url) as ws:
            stranger = str(uuid.uuid4())
            assert authenticate(ws, stranger) not in (stranger, mine)
        with connect(shared.ws_url) as ws:
            assert authenticate(ws, mine, key=other_key) != mine
        assert shared.ws_sessions()[mine] == 1  # still waiting for its owner


def test_large_and_fragmented_messages(emu: Emulator):
    big = make_png(8) + bytes(3 * 1024 * 1024)  # a PNG signature and 3 MiB: over any 1 MiB cap
    task = {"taskType": "imageUpload", "taskUUID": tid(), "image": base64.b64encode(big).decode()}
    text = json.dumps([task])
    with connect(emu.ws_url, max_size=None) as ws:
        authenticate(ws)
        ws.send(iter([text[:1000], text[1000:5000], text[5000:]]))  # three frames, one message
        (item,) = recv(ws)["data"]
    record = emu.image(item["imageUUID"])
    assert record is not None and record.size == len(big)


def test_stopping_the_emulator_closes_websocket_connections():
    emulator = Emulator(api_key=KEY).start()
    with connect(emulator.ws_url) as ws:
        authenticate(ws)
        emulator.stop()
        with pytest.raises((ConnectionClosed, OSError)):
            ws.recv(timeout=10)


def test_only_the_api_path_upgrades(emu: Emulator):
    with pytest.raises(Exception, match="404"):
        connect(emu.ws_url.replace("/v1", "/elsewhere"), open_timeout=5)


def test_without_the_websocket_extra_rest_works_and_the_ws_url_says_what_to_install():
    script = """
import sys, json, base64, uuid
sys.modules["websockets"] = None  # as if the extra were not installed
import httpx
from assetcache.emulator import Emulator, WEBSOCKET_AVAILABLE
assert not WEBSOCKET_AVAILABLE
with Emulator(api_key="k") as emu:
    upgrade = httpx.get(emu.base_url, headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode()})
    rest = httpx.post(emu.base_url, headers={"Authorization": "Bearer k"},
                      json=[{"taskType": "ping", "taskUUID": str(uuid.uuid4())}])
    print(json.dumps([upgrade.status_code, upgrade.json(), rest.status_code]))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    status, body, rest = json.loads(done.stdout)
    assert status == 501 and rest == 200
    assert "assetcache[websocket]" in body["error"] and "websockets" in body["error"]


def test_the_ws_url_is_the_rest_url_with_the_websocket_scheme(emu: Emulator):
    assert emu.ws_url == emu.base_url.replace("http://", "ws://", 1)
    assert httpx.get(emu.control_url + "/stats").json()["ws_connections_open"] == 0
