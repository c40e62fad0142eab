"""The Runware upload-API emulator, driven over real HTTP with raw httpx.

No assetcache client code is used here: these tests pin down what the server
side does, independently of the client that will talk to it.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from assetcache.emulator import FAULT_KINDS, Emulator

pytestmark = pytest.mark.timeout(30)

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}
T0 = 1_700_000_000.0
DAY = 86_400


# ------------------------------------------------------------------ images


def make_png(width: int = 1, height: int = 1) -> bytes:
    """A valid RGB PNG, written by hand with zlib and struct."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def make_bmp() -> bytes:
    """A 1x1 24-bit BMP: file header, BITMAPINFOHEADER, one padded row."""
    pixels = b"\x00\x00\xff\x00"
    info = struct.pack("<IiiHHIIiiII", 40, 1, 1, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    header = struct.pack("<2sIHHI", b"BM", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return header + info + pixels


JPEG = (
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    + b"\xff\xdb\x00\x43\x00"
    + bytes(range(64))
    + b"\xff\xd9"
)
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00"
    b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
WEBP_BODY = b"/\x00\x00\x00\x00\x07\x10\x11\x11\x88\x88\xfe\x07\x00"
WEBP = b"RIFF" + struct.pack("<I", 4 + 8 + len(WEBP_BODY)) + b"WEBP" + b"VP8L"
WEBP += struct.pack("<I", len(WEBP_BODY)) + WEBP_BODY
PNG = make_png()
TIFF = b"II*\x00\x08\x00\x00\x00" + b"\x00" * 32
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>'
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 16


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{b64(data)}"


# ----------------------------------------------------------------- helpers


def tid() -> str:
    return str(uuid.uuid4())


def upload_task(image: str, task_uuid: str | None = None) -> dict[str, Any]:
    return {"taskType": "imageUpload", "taskUUID": task_uuid or tid(), "image": image}


def inference_task(**fields: Any) -> dict[str, Any]:
    return {
        "taskType": "imageInference",
        "taskUUID": tid(),
        "model": "runware:101@1",
        "positivePrompt": "a cat",
        "width": 512,
        "height": 512,
        **fields,
    }


def is_uuid4(value: object) -> bool:
    try:
        return (
            isinstance(value, str)
            and uuid.UUID(value).version == 4
            and str(uuid.UUID(value)) == value
        )
    except ValueError:
        return False


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(api_key=KEY, start_time=T0, frozen=True) as emulator:
        yield emulator


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


def post(http: httpx.Client, emu: Emulator, tasks: Any, headers: dict[str, str] | None = None):
    return http.post(emu.base_url, json=tasks, headers=AUTH if headers is None else headers)


def upload(http: httpx.Client, emu: Emulator, image: bytes = PNG) -> str:
    response = post(http, emu, [upload_task(data_uri(image))])
    assert response.status_code == 200, response.text
    return response.json()["data"][0]["imageUUID"]


def only_error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["data"] == []
    assert len(body["errors"]) == 1
    return body["errors"][0]


# ----------------------------------------------------------------- uploads


@pytest.mark.parametrize(
    "form", ["data_uri", "bare_base64", "octet_stream_uri", "wrapped_base64", "unpadded"]
)
def test_upload_forms_store_the_decoded_bytes(emu: Emulator, http: httpx.Client, form: str):
    image = {
        "data_uri": data_uri(PNG),
        "bare_base64": b64(PNG),
        # What runware's file_to_data_uri(bytes) produces: type left to sniffing.
        "octet_stream_uri": data_uri(PNG, "application/octet-stream"),
        "wrapped_base64": "\n".join(b64(PNG)[i : i + 20] for i in range(0, len(b64(PNG)), 20)),
        "unpadded": b64(PNG).rstrip("="),
    }[form]
    task = upload_task(image)
    response = post(http, emu, [task])

    assert response.status_code == 200
    (item,) = response.json()["data"]
    assert item["taskType"] == "imageUpload"
    assert item["taskUUID"] == task["taskUUID"]
    assert is_uuid4(item["imageUUID"])
    assert item["imageURL"].endswith(f"/images/{item['imageUUID']}.png")
    record = emu.image(item["imageUUID"])
    assert record is not None
    assert (record.format, record.data, record.size) == ("png", PNG, len(PNG))
    assert record.uploaded_at == record.last_used_at == T0
    assert emu.holds(item["imageUUID"])
    assert emu.upload_count == 1
    assert http.get(item["imageURL"]).content == PNG


def test_url_upload_is_stored_opaquely(emu: Emulator, http: httpx.Client):
    url = "https://example.com/cat.png"
    response = post(http, emu, [upload_task(url)])

    (item,) = response.json()["data"]
    record = emu.image(item["imageUUID"])
    assert record is not None
    assert (record.format, record.data, record.source_url) == ("url", None, url)


@pytest.mark.parametrize(
    ("image", "fmt"),
    [(PNG, "png"), (JPEG, "jpeg"), (GIF, "gif"), (make_bmp(), "bmp"), (WEBP, "webp")],
)
def test_every_supported_format_is_sniffed(
    emu: Emulator, http: httpx.Client, image: bytes, fmt: str
):
    response = post(http, emu, [upload_task(b64(image))])
    assert response.status_code == 200, response.text
    record = emu.image(response.json()["data"][0]["imageUUID"])
    assert record is not None and (record.format, record.data) == (fmt, image)


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (b64(b""), "empty"),
        ("not base64 at all!", "base64"),
        (b64(b"just some text, no image"), "unsupported"),
        (b64(TIFF), "TIFF"),
        (b64(SVG), "SVG"),
        (data_uri(SVG, "image/svg+xml"), "SVG"),
        (b64(HEIC), "HEIC"),
        (data_uri(PNG, "image/jpeg"), "declares"),
        (data_uri(JPEG, "image/png"), "declares"),
        (data_uri(PNG, "text/plain"), "declares"),
        ("data:image/png," + b64(PNG), "base64"),
        ("data:image/png;base64" + b64(PNG), "comma"),
        ("https://", "host"),
        (b"BM" + b"\x00" * 30, "unsupported"),
    ],
)
def test_invalid_images_are_rejected(emu: Emulator, http: httpx.Client, image: Any, reason: str):
    if isinstance(image, bytes):
        image = b64(image)
    task = upload_task(image)
    response = post(http, emu, [task])

    assert response.status_code == 400
    error = only_error(response)
    assert error["code"] == "invalidImage"
    assert error["parameter"] == "image"
    assert error["taskUUID"] == task["taskUUID"]
    assert reason in error["message"]
    assert emu.upload_count == 0 and emu.images() == []


def test_non_string_image_is_rejected(emu: Emulator, http: httpx.Client):
    for image in (None, 42, ["x"]):
        response = post(http, emu, [{"taskType": "imageUpload", "taskUUID": tid(), "image": image}])
        assert only_error(response)["code"] == "invalidImage"


def test_response_shape_object_sends_a_lone_result_bare(http: httpx.Client):
    with Emulator(api_key=KEY, response_shape="object") as emu:
        single = post(http, emu, [upload_task(b64(PNG))]).json()
        assert isinstance(single["data"], dict)
        assert is_uuid4(single["data"]["imageUUID"])

        double = post(http, emu, [upload_task(b64(PNG)), upload_task(b64(GIF))]).json()
        assert isinstance(double["data"], list) and len(double["data"]) == 2

        emu.set_response_shape("list")
        assert isinstance(post(http, emu, [upload_task(b64(PNG))]).json()["data"], list)
        with pytest.raises(ValueError):
            emu.set_response_shape("dict")  # type: ignore[arg-type]


# -------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer wrong-key-123"}, {}, {"Authorization": "Basic k"}],
)
def test_bad_key_is_401_and_never_echoed(emu: Emulator, http: httpx.Client, headers):
    response = post(http, emu, [upload_task(b64(PNG))], headers=headers)

    assert response.status_code == 401
    error = only_error(response)
    assert error["code"] == "invalidApiKey"
    assert error["parameter"] == "apiKey"
    assert error["taskType"] == "authentication"
    assert set(error) >= {"message", "taskUUID", "documentation"}
    assert "wrong-key-123" not in response.text
    assert emu.upload_count == 0


def test_authentication_task_instead_of_header(emu: Emulator, http: httpx.Client):
    auth = {"taskType": "authentication", "apiKey": KEY}
    response = post(http, emu, [auth, upload_task(b64(PNG))], headers={})
    assert response.status_code == 200
    assert [d["taskType"] for d in response.json()["data"]] == ["imageUpload"]

    bad = {"taskType": "authentication", "apiKey": "nope-secret"}
    response = post(http, emu, [bad, upload_task(b64(PNG))], headers={})
    assert response.status_code == 401 and "nope-secret" not in response.text


def test_key_collections_and_any_key(http: httpx.Client):
    with Emulator(api_key=["a", "b"]) as emu:
        for key, status in (("a", 200), ("b", 200), ("c", 401)):
            headers = {"Authorization": f"Bearer {key}"}
            assert post(http, emu, [{"taskType": "ping"}], headers).status_code == status
    with Emulator(api_key=None) as emu:
        headers = {"Authorization": "Bearer anything"}
        assert post(http, emu, [{"taskType": "ping"}], headers).status_code == 200
        assert post(http, emu, [{"taskType": "ping"}], {}).status_code == 401


# ---------------------------------------------------------- request shape


@pytest.mark.parametrize("body", [b"{not json", b'{"taskType": "ping"}', b"[]", b"", b"\xff\xfe"])
def test_body_must_be_a_json_array(emu: Emulator, http: httpx.Client, body: bytes):
    response = http.post(emu.base_url, content=body, headers=AUTH)
    assert response.status_code == 400
    error = only_error(response)
    assert error["code"] == "invalidPayload"
    assert set(error) == {"code", "message", "parameter", "taskType", "taskUUID", "documentation"}


def test_mixed_batch_succeeds_and_fails_per_task(emu: Emulator, http: httpx.Client):
    good, bad = upload_task(b64(PNG)), upload_task(b64(TIFF))
    missing_type = {"taskUUID": tid()}
    response = post(
        http,
        emu,
        [good, bad, {"taskType": "frobnicate", "taskUUID": tid()}, missing_type, "not an object"],
    )

    assert response.status_code == 200
    body = response.json()
    assert [d["taskUUID"] for d in body["data"]] == [good["taskUUID"]]
    codes = [e["code"] for e in body["errors"]]
    assert codes == ["invalidImage", "invalidTaskType", "missingTaskType", "invalidTask"]
    assert body["errors"][0]["taskUUID"] == bad["taskUUID"]
    for error in body["errors"]:
        assert set(error) == {
            "code",
            "message",
            "parameter",
            "taskType",
            "taskUUID",
            "documentation",
        }
    assert emu.upload_count == 1 and emu.task_count == 5


def test_task_uuid_rules(emu: Emulator, http: httpx.Client):
    task = upload_task(b64(PNG))
    assert post(http, emu, [task]).status_code == 200

    again = post(http, emu, [dict(task)])
    assert again.status_code == 400
    assert only_error(again)["code"] == "conflictTaskUUID"
    assert only_error(again)["parameter"] == "taskUUID"

    # Duplicates inside one request: the second copy conflicts.
    twin = upload_task(b64(PNG))
    body = post(http, emu, [twin, dict(twin)]).json()
    assert len(body["data"]) == 1 and body["errors"][0]["code"] == "conflictTaskUUID"

    for bad_uuid, code in (
        (None, "missingTaskUUID"),
        ("1234", "invalidTaskUUID"),
        (str(uuid.uuid1()), "invalidTaskUUID"),
    ):
        task = {"taskType": "imageUpload", "image": b64(PNG)}
        if bad_uuid:
            task["taskUUID"] = bad_uuid
        assert only_error(post(http, emu, [task]))["code"] == code

    # A rejected task does not claim its taskUUID: the fixed retry goes through.
    rejected = upload_task(b64(TIFF))
    assert post(http, emu, [rejected]).status_code == 400
    assert post(http, emu, [{**rejected, "image": b64(PNG)}]).status_code == 200


def test_ping_and_unknown_task(emu: Emulator, http: httpx.Client):
    response = post(http, emu, [{"taskType": "ping", "ping": True}])
    assert response.json() == {"data": [{"taskType": "ping", "pong": True}]}
    error = only_error(post(http, emu, [{"taskType": "imageFrobnicate", "taskUUID": tid()}]))
    assert (error["code"], error["parameter"]) == ("invalidTaskType", "taskType")


# --------------------------------------------------------------- retention


def test_images_expire_thirty_days_after_upload(emu: Emulator, http: httpx.Client):
    image_uuid = upload(http, emu)
    emu.advance(days=29, hours=23)
    assert emu.holds(image_uuid)
    emu.advance(hours=1)  # exactly last_used_at + 30 days: gone
    assert not emu.holds(image_uuid)
    assert emu.image(image_uuid) is None and emu.images() == []


def test_use_slides_the_retention_window(emu: Emulator, http: httpx.Client):
    image_uuid = upload(http, emu)
    emu.advance(days=20)
    response = post(http, emu, [inference_task(seedImage=image_uuid)])
    assert response.status_code == 200
    (item,) = response.json()["data"]
    assert item["taskType"] == "imageInference" and is_uuid4(item["imageUUID"])
    record = emu.image(image_uuid)
    assert record is not None and record.last_used_at == T0 + 20 * DAY
    assert record.uploaded_at == T0

    emu.advance(days=20)  # day 40: alive thanks to the use on day 20
    assert emu.holds(image_uuid)
    emu.advance(days=10)  # day 50: 30 days after the last use
    assert not emu.holds(image_uuid)


def test_custom_retention(http: httpx.Client):
    with Emulator(api_key=KEY, retention=timedelta(hours=1), frozen=True) as emu:
        image_uuid = upload(http, emu)
        emu.advance(seconds=3599)
        assert emu.holds(image_uuid)
        emu.advance(seconds=1)
        assert not emu.holds(image_uuid)


def test_clock_runs_unless_frozen():
    emu = Emulator(start_time=T0)
    first = emu.clock()
    assert T0 <= first < T0 + 5
    time.sleep(0.01)
    assert emu.clock() > first
    assert emu.advance(days=1) >= first + DAY
    with pytest.raises(ValueError):
        emu.advance(seconds=-1)
    frozen = Emulator(start_time=T0, frozen=True)
    time.sleep(0.01)
    assert frozen.clock() == T0


# ------------------------------------------------------- consuming tasks


@pytest.mark.parametrize(
    ("field", "code"),
    [
        ("seedImage", "invalidSeedImage"),
        ("maskImage", "invalidMaskImage"),
        ("referenceImages", "invalidReferenceImages"),
    ],
)
def test_unknown_or_expired_reference_is_invalid(
    emu: Emulator, http: httpx.Client, field: str, code: str
):
    stale = upload(http, emu)
    emu.advance(days=31)
    for missing in (str(uuid.uuid4()), stale):
        value: Any = [missing] if field == "referenceImages" else missing
        task = inference_task(**{field: value})
        response = post(http, emu, [task])
        assert response.status_code == 400
        error = only_error(response)
        path = f"{field}[0]" if field == "referenceImages" else field
        assert (error["code"], error["parameter"]) == (code, path)
        assert error["taskType"] == "imageInference"
        assert error["taskUUID"] == task["taskUUID"]
        assert f"Invalid value for {path} parameter" in error["message"]
        assert "previously uploaded or generated image" in error["message"]
    assert emu.inference_count == 0


def test_failed_task_does_not_refresh_other_references(emu: Emulator, http: httpx.Client):
    alive = upload(http, emu)
    emu.advance(days=10)
    task = inference_task(seedImage=alive, maskImage=str(uuid.uuid4()))
    assert only_error(post(http, emu, [task]))["code"] == "invalidMaskImage"
    record = emu.image(alive)
    assert record is not None and record.last_used_at == T0


def test_all_references_refreshed_and_inline_images_pass(emu: Emulator, http: httpx.Client):
    seed, mask, ref = upload(http, emu), upload(http, emu), upload(http, emu)
    emu.advance(days=5)
    task = inference_task(
        seedImage=seed.upper(),  # UUIDs are case-insensitive
        maskImage=mask,
        referenceImages=[ref, "https://example.com/style.png"],
        numberResults=3,
    )
    response = post(http, emu, [task])
    assert response.status_code == 200
    assert len(response.json()["data"]) == 3
    for image_uuid in (seed, mask, ref):
        record = emu.image(image_uuid)
        assert record is not None and record.last_used_at == T0 + 5 * DAY
    assert emu.inference_count == 1


def test_nested_inputs_are_checked_too(emu: Emulator, http: httpx.Client):
    task = inference_task(inputs={"seedImage": str(uuid.uuid4())})
    error = only_error(post(http, emu, [task]))
    assert (error["code"], error["parameter"]) == ("invalidSeedImage", "inputs.seedImage")


@pytest.mark.parametrize(
    "task_type", ["upscale", "imageUpscale", "removeBackground", "imageBackgroundRemoval"]
)
def test_input_image_tasks(emu: Emulator, http: httpx.Client, task_type: str):
    image_uuid = upload(http, emu)
    emu.advance(days=3)
    ok = post(http, emu, [{"taskType": task_type, "taskUUID": tid(), "inputImage": image_uuid}])
    assert ok.status_code == 200
    assert ok.json()["data"][0]["taskType"] == task_type
    record = emu.image(image_uuid)
    assert record is not None and record.last_used_at == T0 + 3 * DAY

    for task in (
        {"taskType": task_type, "taskUUID": tid(), "inputImage": str(uuid.uuid4())},
        {"taskType": task_type, "taskUUID": tid()},
    ):
        error = only_error(post(http, emu, [task]))
        assert (error["code"], error["parameter"]) == ("invalidInputImage", "inputImage")


def test_async_delivery_acknowledges_then_get_response(emu: Emulator, http: httpx.Client):
    image_uuid = upload(http, emu)
    task = inference_task(seedImage=image_uuid, deliveryMethod="async", numberResults=2)
    ack = post(http, emu, [task]).json()["data"]
    assert ack == [{"taskType": "imageInference", "taskUUID": task["taskUUID"]}]

    poll = {"taskType": "getResponse", "taskUUID": task["taskUUID"]}
    for _ in range(2):  # cumulative: every poll returns all finished results
        results = post(http, emu, [poll]).json()["data"]
        assert len(results) == 2
        assert all(r["status"] == "success" and is_uuid4(r["imageUUID"]) for r in results)
        assert all(r["taskUUID"] == task["taskUUID"] for r in results)

    unknown = only_error(post(http, emu, [{"taskType": "getResponse", "taskUUID": tid()}]))
    assert unknown["code"] == "taskFailedOrNotFound"


def test_number_results_is_bounded(emu: Emulator, http: httpx.Client):
    for bad in (0, 21, "2", True):
        error = only_error(post(http, emu, [inference_task(numberResults=bad)]))
        assert error["code"] == "invalidNumberResults"


# ------------------------------------------------------------ mediaStorage


def test_media_storage_upload_and_delete(emu: Emulator, http: httpx.Client):
    task = {
        "taskType": "mediaStorage",
        "taskUUID": tid(),
        "operation": "upload",
        "media": data_uri(JPEG, "image/jpeg"),
    }
    (item,) = post(http, emu, [task]).json()["data"]
    assert item["operation"] == "upload" and item["taskUUID"] == task["taskUUID"]
    media_uuid = item["mediaUUID"]
    assert is_uuid4(media_uuid) and item["mediaURL"].endswith(".jpg")
    assert emu.holds(media_uuid) and emu.upload_count == 1

    # Stored media is usable like an uploaded image.
    assert post(http, emu, [inference_task(seedImage=media_uuid)]).status_code == 200

    delete = {
        "taskType": "mediaStorage",
        "taskUUID": tid(),
        "operation": "delete",
        "media": media_uuid,
    }
    assert post(http, emu, [delete]).json()["data"] == [
        {
            "taskType": "mediaStorage",
            "taskUUID": delete["taskUUID"],
            "operation": "delete",
            "mediaUUID": media_uuid,
        }
    ]
    assert not emu.holds(media_uuid) and emu.delete_count == 1

    again = only_error(post(http, emu, [{**delete, "taskUUID": tid()}]))
    assert (again["code"], again["parameter"]) == ("invalidMedia", "media")
    bad_media = only_error(post(http, emu, [{**task, "taskUUID": tid(), "media": b64(TIFF)}]))
    assert (bad_media["code"], bad_media["parameter"]) == ("invalidMedia", "media")
    bad_op = only_error(post(http, emu, [{**task, "taskUUID": tid(), "operation": "copy"}]))
    assert (bad_op["code"], bad_op["parameter"]) == ("invalidOperation", "operation")


def test_remote_deletion_helper(emu: Emulator, http: httpx.Client):
    image_uuid = upload(http, emu)
    assert emu.delete(image_uuid) is True
    assert emu.delete(image_uuid) is False
    assert not emu.holds(image_uuid)
    assert only_error(post(http, emu, [inference_task(seedImage=image_uuid)]))["code"] == (
        "invalidSeedImage"
    )
    assert emu.delete_count == 0  # only API deletions are counted


# ------------------------------------------------------------------ faults


@pytest.mark.parametrize("kind", ["500", "503", "429"])
def test_status_faults_store_nothing(emu: Emulator, http: httpx.Client, kind: str):
    emu.fail_next(kind)
    task = upload_task(b64(PNG))
    response = post(http, emu, [task])
    assert response.status_code == int(kind)
    assert response.json()["errors"][0]["code"]
    if kind == "429":
        assert response.headers["Retry-After"] == "0"
    assert emu.upload_count == 0 and emu.fault_count == 1
    # The same task (same taskUUID) goes through on retry: it was never processed.
    assert post(http, emu, [task]).status_code == 200
    assert emu.upload_count == 1


def test_retry_after_is_configurable(http: httpx.Client):
    with Emulator(api_key=KEY, retry_after=1) as emu:
        emu.fail_next("429")
        assert post(http, emu, [{"taskType": "ping"}]).headers["Retry-After"] == "1"


def test_drop_hangs_up_without_storing(emu: Emulator, http: httpx.Client):
    emu.fail_next("drop")
    with pytest.raises(httpx.RemoteProtocolError):
        post(http, emu, [upload_task(b64(PNG))])
    assert emu.upload_count == 0 and emu.fault_count == 1
    assert post(http, emu, [upload_task(b64(PNG))]).status_code == 200


def test_drop_after_stores_then_hangs_up(emu: Emulator, http: httpx.Client):
    emu.fail_next("drop_after")
    task = upload_task(b64(PNG))
    with pytest.raises(httpx.RemoteProtocolError):
        post(http, emu, [task])
    assert emu.upload_count == 1 and len(emu.images()) == 1
    # The task was processed, so resending the same taskUUID conflicts.
    assert only_error(post(http, emu, [task]))["code"] == "conflictTaskUUID"


def test_slow_fault_delays_then_answers(http: httpx.Client):
    with Emulator(api_key=KEY, slow_seconds=0.3) as emu:
        emu.fail_next("slow")
        started = time.monotonic()
        response = post(http, emu, [upload_task(b64(PNG))])
        assert time.monotonic() - started >= 0.3
        assert response.status_code == 200 and emu.upload_count == 1
        with pytest.raises(httpx.ReadTimeout):
            emu.fail_next("slow")
            http.post(emu.base_url, json=[{"taskType": "ping"}], headers=AUTH, timeout=0.05)


def test_latency_applies_to_every_request(http: httpx.Client):
    with Emulator(api_key=KEY, latency=0.2) as emu:
        started = time.monotonic()
        post(http, emu, [{"taskType": "ping"}])
        assert time.monotonic() - started >= 0.2
        emu.set_latency(0)
        started = time.monotonic()
        post(http, emu, [{"taskType": "ping"}])
        assert time.monotonic() - started < 0.2


@pytest.mark.parametrize("kind", ["nonjson", "empty", "no_uuid", "bad_uuid"])
def test_bogus_success_faults_store_nothing(emu: Emulator, http: httpx.Client, kind: str):
    emu.fail_next(kind)
    task = upload_task(b64(PNG))
    response = post(http, emu, [task])
    assert response.status_code == 200
    if kind == "nonjson":
        with pytest.raises(json.JSONDecodeError):
            response.json()
    elif kind == "empty":
        assert response.json() == {"data": []}
    else:
        (item,) = response.json()["data"]
        assert item["taskUUID"] == task["taskUUID"]
        assert item.get("imageUUID") == ("not-a-uuid" if kind == "bad_uuid" else None)
    assert emu.upload_count == 0 and emu.images() == []


def test_bad_uuid_fault_on_media_storage(emu: Emulator, http: httpx.Client):
    emu.fail_next("bad_uuid")
    task = {"taskType": "mediaStorage", "taskUUID": tid(), "operation": "upload", "media": b64(PNG)}
    (item,) = post(http, emu, [task]).json()["data"]
    assert item["mediaUUID"] == "not-a-uuid"


def test_foreign_task_stores_but_mislabels(emu: Emulator, http: httpx.Client):
    emu.fail_next("foreign_task")
    task = upload_task(b64(PNG))
    (item,) = post(http, emu, [task]).json()["data"]
    assert is_uuid4(item["taskUUID"]) and item["taskUUID"] != task["taskUUID"]
    assert emu.holds(item["imageUUID"]) and emu.upload_count == 1


def test_fail_next_is_a_fifo_one_per_request(emu: Emulator, http: httpx.Client):
    emu.fail_next("503", "500")
    emu.fail_next("429")
    statuses = [post(http, emu, [{"taskType": "ping"}]).status_code for _ in range(4)]
    assert statuses == [503, 500, 429, 200]
    assert emu.fault_count == 3 and emu.request_count == 4
    with pytest.raises(ValueError):
        emu.fail_next("teapot")


def test_fail_next_wins_over_random_faults(http: httpx.Client):
    with Emulator(api_key=KEY, fault_rate=1.0, fault_kinds=["500"], seed=1) as emu:
        emu.fail_next("empty")
        assert post(http, emu, [{"taskType": "ping"}]).json() == {"data": []}
        assert post(http, emu, [{"taskType": "ping"}]).status_code == 500
        emu.set_faults(rate=0.0)
        assert post(http, emu, [{"taskType": "ping"}]).status_code == 200


def test_random_faults_are_seeded(http: httpx.Client):
    def run(seed: int) -> list[int]:
        with Emulator(
            api_key=KEY, fault_rate=0.5, fault_kinds=["500", "503", "429"], seed=seed
        ) as emu:
            return [post(http, emu, [{"taskType": "ping"}]).status_code for _ in range(30)]

    first = run(7)
    assert first == run(7)
    assert set(first) == {200, 500, 503, 429}


def test_default_random_faults_are_the_transient_ones(http: httpx.Client):
    with Emulator(api_key=KEY, fault_rate=1.0, seed=3) as emu:
        outcomes = set()
        for _ in range(40):
            try:
                outcomes.add(post(http, emu, [{"taskType": "ping"}]).status_code)
            except httpx.RemoteProtocolError:
                outcomes.add("drop")
        assert outcomes == {500, 503, 429, "drop"}
        assert emu.fault_count == 40


def test_fault_configuration_is_validated():
    assert {
        "500",
        "503",
        "429",
        "drop",
        "drop_after",
        "slow",
        "nonjson",
        "empty",
        "no_uuid",
        "bad_uuid",
        "foreign_task",
    } == set(FAULT_KINDS)
    with pytest.raises(ValueError):
        Emulator(fault_kinds=["500", "boom"])
    with pytest.raises(ValueError):
        Emulator(fault_rate=1.5)
    emu = Emulator()
    with pytest.raises(ValueError):
        emu.set_faults(kinds=["nope"])


# ---------------------------------------------------------------- counters


def test_counters_and_reset(emu: Emulator, http: httpx.Client):
    body = [upload_task(b64(PNG)), upload_task(b64(PNG)), upload_task(b64(GIF))]
    response = post(http, emu, body)
    assert response.status_code == 200
    assert emu.request_count == 1 and emu.task_count == 3 and emu.upload_count == 3
    assert emu.bytes_received == len(response.request.content)
    counts = emu.uploads_by_sha256()
    assert sorted(counts.values()) == [1, 2]
    record = emu.image(response.json()["data"][0]["imageUUID"])
    assert record is not None and counts[record.sha256] == 2

    emu.reset_counters()
    assert (emu.request_count, emu.task_count, emu.upload_count, emu.bytes_received) == (0, 0, 0, 0)
    assert emu.uploads_by_sha256() == {} and len(emu.images()) == 3


def test_concurrent_uploads_are_all_stored(emu: Emulator):
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with httpx.Client(timeout=5) as client:
                for _ in range(10):
                    assert post(client, emu, [upload_task(b64(make_png(2, 2)))]).status_code == 200
        except BaseException as exc:  # surfaced below: threads cannot fail the test directly
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert emu.upload_count == 80 and len({i.uuid for i in emu.images()}) == 80
    assert list(emu.uploads_by_sha256().values()) == [80]


# ------------------------------------------------------------------- state


def test_state_persists_across_instances(tmp_path: Path, http: httpx.Client):
    state = tmp_path / "emu.json"
    with Emulator(api_key=KEY, start_time=T0, frozen=True, state_path=state) as first:
        kept = upload(http, first)
        dropped = upload(http, first)
        first.advance(days=10)
        assert post(http, first, [inference_task(seedImage=kept)]).status_code == 200
        first.delete(dropped)
        first_clock = first.clock()
    assert json.loads(state.read_text())["images"]  # plain JSON, metadata only

    with Emulator(api_key=KEY, start_time=0, frozen=True, state_path=state) as second:
        assert second.clock() == first_clock  # the file's clock wins over start_time
        assert second.holds(kept) and not second.holds(dropped)
        record = second.image(kept)
        assert record is not None
        assert (record.uploaded_at, record.last_used_at, record.format) == (
            T0,
            T0 + 10 * DAY,
            "png",
        )
        assert record.data is None  # bytes are not persisted
        second.advance(days=29)
        assert second.holds(kept)

    with Emulator(api_key=KEY, frozen=True, state_path=state) as third:
        assert third.holds(kept)  # advance() was persisted too
        third.advance(days=1)
        assert not third.holds(kept)
    # No temp files left behind; the lock file stays (removing it would race).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emu.json", "emu.json.lock"]


def test_running_clock_counts_real_time_between_runs(tmp_path: Path):
    state = tmp_path / "emu.json"
    first = Emulator(start_time=T0, state_path=state)
    first.advance(days=2)
    second = Emulator(state_path=state)
    assert T0 + 2 * DAY <= second.clock() < T0 + 2 * DAY + 5


# ------------------------------------------------------- network & control


def test_binds_loopback_only_by_default(emu: Emulator):
    assert emu.host == "127.0.0.1"
    assert emu.base_url == f"http://127.0.0.1:{emu.port}/v1"
    if sys.platform.startswith("linux"):
        # 127.0.0.2 is loopback too on Linux; a wildcard bind would accept it.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", emu.port), timeout=2).close()


def test_control_endpoints(emu: Emulator, http: httpx.Client):
    upload(http, emu)
    root = emu.base_url.removesuffix("/v1")
    stats = http.get(f"{root}/_emulator/stats").json()
    assert stats["upload_count"] == 1 and stats["request_count"] == 1
    assert stats["clock"] == T0 and stats["images_held"] == 1
    assert set(stats) >= {
        "task_count",
        "fault_count",
        "delete_count",
        "inference_count",
        "bytes_received",
        "uploads_by_sha256",
    }

    moved = http.post(f"{root}/_emulator/advance", json={"seconds": 31 * DAY}).json()
    assert moved == {"clock": T0 + 31 * DAY} and emu.clock() == T0 + 31 * DAY
    assert http.get(f"{root}/_emulator/stats").json()["images_held"] == 0
    assert http.post(f"{root}/_emulator/advance", json={"seconds": -1}).status_code == 400
    assert http.post(f"{root}/_emulator/advance", content=b"[1]").status_code == 400
    assert http.get(f"{root}/nowhere").status_code == 404
    assert http.get(f"{root}/images/{uuid.uuid4()}.png").status_code == 404
    assert emu.request_count == 1  # control traffic is not API traffic


def test_stop_cuts_pooled_connections(http: httpx.Client):
    emu = Emulator(api_key=KEY).start()
    assert post(http, emu, [{"taskType": "ping"}]).status_code == 200
    emu.stop()
    emu.stop()  # idempotent
    with pytest.raises(httpx.TransportError):
        post(http, emu, [{"taskType": "ping"}])


def test_chunked_request_bodies_are_read(emu: Emulator, http: httpx.Client):
    payload = json.dumps([upload_task(b64(PNG))]).encode()
    response = http.post(emu.base_url, content=iter([payload[:10], payload[10:]]), headers=AUTH)
    assert response.status_code == 200 and emu.upload_count == 1


def test_keep_bytes_off(http: httpx.Client):
    with Emulator(api_key=KEY, keep_bytes=False) as emu:
        record = emu.image(upload(http, emu))
        assert record is not None and record.data is None and record.size == len(PNG)


# --------------------------------------------------------------------- CLI


def test_cli_serves_until_sigterm(tmp_path: Path):
    state = tmp_path / "state.json"
    env = {**os.environ, "EMU_TEST_KEY": "cli-key"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "assetcache.emulator",
            "--port",
            "0",
            "--api-key-env",
            "EMU_TEST_KEY",
            "--state",
            str(state),
            "--latency",
            "0.01",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:") and line.endswith("/v1")
        base_url = line.removeprefix("listening on ")
        with httpx.Client(timeout=5) as client:
            ok = client.post(
                base_url, json=[upload_task(b64(PNG))], headers={"Authorization": "Bearer cli-key"}
            )
            assert ok.status_code == 200
            denied = client.post(base_url, json=[{"taskType": "ping"}], headers=AUTH)
            assert denied.status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
    assert len(json.loads(state.read_text())["images"]) == 1


# ------------------------------------------------------------- isolation


def test_emulator_shares_no_code_with_the_client():
    """The server side imports only the stdlib and its own package; Pillow
    (lazily, in _downscale.py) and websockets (guarded, in _ws.py) are the
    optional exceptions."""
    package = Path(__file__).resolve().parents[1] / "assetcache" / "emulator"

    def allowed(module: str, source: Path, lazy: bool) -> bool:
        top = module.split(".")[0]
        if top in sys.stdlib_module_names:
            return True
        if top == "websockets":
            return source.name == "_ws.py"
        return top == "PIL" and source.name == "_downscale.py" and lazy

    for source in package.glob("*.py"):
        tree = ast.parse(source.read_text())
        module_level = set(map(id, tree.body))
        for node in ast.walk(tree):
            lazy = id(node) not in module_level
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                assert node.level > 0 or not module.startswith("assetcache"), source
                if node.level > 1:
                    pytest.fail(f"{source.name} reaches outside the emulator package")
                if node.level == 0:
                    assert allowed(module, source, lazy), (source, module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert allowed(alias.name, source, lazy), (source, alias.name)


def test_import_is_light():
    code = (
        "import sys, assetcache.emulator; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('httpx', 'aiohttp', 'requests', 'urllib3', 'PIL', 'runware')]; "
        "assert not bad, bad"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1]
    )


def test_a_request_is_processed_on_arrival_then_answered_after_the_latency():
    # The upload is stored as the request arrives; the answer waits out the
    # latency (here far longer than the test waits for the upload).
    with Emulator(api_key=KEY, latency=25.0) as emu:
        body = json.dumps([upload_task(b64(make_png(3, 2)))])
        answered = threading.Event()

        def send() -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(emu.base_url, content=body, headers=AUTH, timeout=60)
            answered.set()

        threading.Thread(target=send, daemon=True).start()
        deadline = time.monotonic() + 10
        while emu.upload_count == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert emu.upload_count == 1
        assert not answered.is_set()
