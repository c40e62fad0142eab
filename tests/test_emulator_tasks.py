"""The tasks a pipeline runs, against the emulator over REST: every parameter that
takes an uploaded image is checked, generated outputs are real images that
later tasks may use, mediaStorage can answer "still processing", and the
state file stays whole when several emulators share it."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import make_png

from assetcache.emulator import Emulator, EmulatorStateError

KEY = "tasks-key"
T0 = 1_750_000_000.0
DAY = 86400

# Written from the list of parameters (not imported from the emulator):
# (task type, where the image goes as a path template, expected code, parameter).
MAPPED = [
    ("imageInference", "seedImage", "invalidSeedImage", "seedImage"),
    ("imageInference", "maskImage", "invalidMaskImage", "maskImage"),
    ("imageInference", "referenceImages[]", "invalidReferenceImages", "referenceImages[1]"),
    ("imageInference", "controlNet[].guideImage", "invalidGuideImage", "controlNet[1].guideImage"),
    ("imageInference", "ipAdapters[].guideImage", "invalidGuideImage", "ipAdapters[1].guideImage"),
    (
        "imageInference",
        "ipAdapters[].guideImages[]",
        "invalidGuideImages",
        "ipAdapters[1].guideImages[1]",
    ),
    (
        "imageInference",
        "acePlusPlus.inputImages[]",
        "invalidInputImages",
        "acePlusPlus.inputImages[1]",
    ),
    (
        "imageInference",
        "acePlusPlus.inputMasks[]",
        "invalidInputMasks",
        "acePlusPlus.inputMasks[1]",
    ),
    ("imageInference", "puLID.inputImages[]", "invalidInputImages", "puLID.inputImages[1]"),
    (
        "imageInference",
        "photoMaker.inputImages[]",
        "invalidInputImages",
        "photoMaker.inputImages[1]",
    ),
    ("imageInference", "photoMaker.images[]", "invalidImages", "photoMaker.images[1]"),
    ("imageInference", "instantID.inputImage", "invalidInputImage", "instantID.inputImage"),
    ("imageInference", "instantID.inputImages[]", "invalidInputImages", "instantID.inputImages[1]"),
    ("imageInference", "instantID.poseImage", "invalidPoseImage", "instantID.poseImage"),
    ("imageInference", "regions[].mask", "invalidMask", "regions[1].mask"),
    ("imageInference", "inputs.image", "invalidImage", "inputs.image"),
    ("imageInference", "inputs.images[]", "invalidImages", "inputs.images[1]"),
    ("imageInference", "inputs.seedImage", "invalidSeedImage", "inputs.seedImage"),
    ("imageInference", "inputs.mask", "invalidMask", "inputs.mask"),
    ("imageInference", "inputs.maskImage", "invalidMaskImage", "inputs.maskImage"),
    (
        "imageInference",
        "inputs.referenceImages[]",
        "invalidReferenceImages",
        "inputs.referenceImages[1]",
    ),
    (
        "imageInference",
        "inputs.referenceImages[].image",
        "invalidReferenceImages",
        "inputs.referenceImages[1].image",
    ),
    ("imageInference", "inputs.references[]", "invalidReferences", "inputs.references[1]"),
    (
        "imageInference",
        "inputs.superResolutionReferences[]",
        "invalidSuperResolutionReferences",
        "inputs.superResolutionReferences[1]",
    ),
    *[
        (task, where, code, param)
        for task in (
            "imageUpscale",
            "imageBackgroundRemoval",
            "imageCaption",
            "imageControlNetPreProcess",
            "imageMasking",
            "imageVectorize",
        )
        for where, code, param in (
            ("inputImage", "invalidInputImage", "inputImage"),
            ("inputImages[]", "invalidInputImages", "inputImages[1]"),
            ("inputs.image", "invalidImage", "inputs.image"),
        )
    ],
    ("videoInference", "frameImages[]", "invalidFrameImages", "frameImages[1]"),
    (
        "videoInference",
        "frameImages[].inputImage",
        "invalidFrameImages",
        "frameImages[1].inputImage",
    ),
    ("videoInference", "referenceImages[]", "invalidReferenceImages", "referenceImages[1]"),
    ("videoInference", "inputs.frameImages[]", "invalidFrameImages", "inputs.frameImages[1]"),
    ("videoInference", "inputs.frames[].image", "invalidFrames", "inputs.frames[1].image"),
    (
        "videoInference",
        "inputs.referenceImages[]",
        "invalidReferenceImages",
        "inputs.referenceImages[1]",
    ),
]


def place(template: str, values: list[str]) -> dict[str, Any]:
    """A task fragment putting ``values`` where ``template`` says: every ``[]`` holds
    one entry per value, entry ``i`` built from the first ``i + 1`` values (so the
    last value, the one under test, sits at index ``[1]`` at every level)."""
    head, _, rest = template.partition(".")
    if head.endswith("[]"):
        name = head[:-2]
        if rest:
            return {name: [place(rest, values[: i + 1]) for i in range(len(values))]}
        return {name: list(values)}
    if rest:
        return {head: place(rest, values)}
    return {head: values[-1]}


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(api_key=KEY, start_time=T0, frozen=True) as emulator:
        yield emulator


def post(emu: Emulator, *tasks: dict[str, Any]) -> httpx.Response:
    return httpx.post(emu.base_url, json=list(tasks), headers={"Authorization": f"Bearer {KEY}"})


def tid() -> str:
    return str(uuid.uuid4())


def upload(emu: Emulator, seed: int) -> str:
    task = {"taskType": "imageUpload", "taskUUID": tid(), "image": b64(make_png(seed))}
    return str(post(emu, task).json()["data"][0]["imageUUID"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def task_with(task_type: str, template: str, values: list[str]) -> dict[str, Any]:
    task: dict[str, Any] = {"taskType": task_type, "taskUUID": tid(), "positivePrompt": "x"}
    fragment = place(template, values)
    for key, value in fragment.items():
        if isinstance(value, dict) and isinstance(task.get(key), dict):
            task[key].update(value)
        else:
            task[key] = value
    return task


@pytest.mark.parametrize(("task_type", "template", "code", "parameter"), MAPPED)
def test_every_mapped_parameter_is_checked_and_counts_as_a_use(
    emu: Emulator, task_type: str, template: str, code: str, parameter: str
):
    alive, gone = upload(emu, 1), upload(emu, 2)
    assert emu.delete(gone)
    emu.advance(days=20)
    # An array holds a live image first, then the deleted one: the error names its index.
    refused = post(emu, task_with(task_type, template, [alive, gone]))
    assert refused.status_code == 400, refused.text
    (error,) = refused.json()["errors"]
    assert (error["code"], error["parameter"]) == (code, parameter)
    assert "previously uploaded or generated image" in error["message"]
    held = emu.image(alive)
    assert held is not None and held.last_used_at == T0  # a refused task is no use

    accepted = post(emu, task_with(task_type, template, [alive, alive]))
    assert accepted.status_code == 200, accepted.text
    held = emu.image(alive)
    assert held is not None and held.last_used_at == T0 + 20 * DAY
    emu.advance(days=29)
    assert emu.holds(alive)  # the use slid its 30-day window


@pytest.mark.parametrize("missing", ["never-uploaded", "expired"])
def test_unknown_and_expired_uuids_are_refused_like_deleted_ones(emu: Emulator, missing: str):
    image = str(uuid.uuid4())
    if missing == "expired":
        image = upload(emu, 3)
        emu.advance(days=31)
    task = task_with("imageInference", "controlNet[].guideImage", [image])
    (error,) = post(emu, task).json()["errors"]
    assert (error["code"], error["parameter"]) == ("invalidGuideImage", "controlNet[0].guideImage")


def test_inline_images_and_urls_pass_without_lookup(emu: Emulator):
    task = task_with(
        "imageInference",
        "referenceImages[]",
        ["https://example.com/a.png", "data:image/png;base64," + b64(make_png(4))],
    )
    assert post(emu, task).status_code == 200


def test_a_wrong_shape_is_refused_by_path(emu: Emulator):
    task = {"taskType": "imageInference", "taskUUID": tid(), "referenceImages": "not-a-list"}
    (error,) = post(emu, task).json()["errors"]
    assert (error["code"], error["parameter"]) == ("invalidReferenceImages", "referenceImages")
    task = {"taskType": "imageInference", "taskUUID": tid(), "controlNet": [{"guideImage": 7}]}
    (error,) = post(emu, task).json()["errors"]
    assert error["parameter"] == "controlNet[0].guideImage"


@pytest.mark.parametrize(
    ("task_type", "uuid_field", "url_field"),
    [
        ("imageInference", "imageUUID", "imageURL"),
        ("imageUpscale", "imageUUID", "imageURL"),
        ("imageBackgroundRemoval", "imageUUID", "imageURL"),
    ],
)
def test_generated_outputs_are_held_served_and_usable_as_inputs(
    emu: Emulator, task_type: str, uuid_field: str, url_field: str
):
    source = upload(emu, 5)
    task = {"taskType": task_type, "taskUUID": tid(), "positivePrompt": "a", "inputImage": source}
    if task_type == "imageInference":
        task["seedImage"] = task.pop("inputImage")
    (result,) = post(emu, task).json()["data"]
    made = result[uuid_field]
    assert made != source and emu.holds(made) and emu.generated_count == 1
    assert [i.uuid for i in emu.generated_images()] == [made]
    assert [i.uuid for i in emu.images()] == [source]  # images() lists uploads only
    served = httpx.get(result[url_field])
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert served.content.startswith(b"\x89PNG\r\n\x1a\n")
    later = {"taskType": "imageUpscale", "taskUUID": tid(), "inputImage": made}
    assert post(emu, later).status_code == 200


def test_outputs_are_deterministic_in_what_the_task_asks(emu: Emulator):
    def pixels(prompt: str) -> bytes:
        task = {"taskType": "imageInference", "taskUUID": tid(), "positivePrompt": prompt}
        (result,) = post(emu, task).json()["data"]
        return httpx.get(result["imageURL"]).content

    assert pixels("a cat") == pixels("a cat")
    assert pixels("a cat") != pixels("a dog")


def test_caption_answers_text_for_its_input(emu: Emulator):
    one, two = upload(emu, 6), upload(emu, 7)
    answers = [
        post(emu, {"taskType": "imageCaption", "taskUUID": tid(), "inputImage": image}).json()
        for image in (one, one, two)
    ]
    texts = [a["data"][0]["text"] for a in answers]
    assert texts[0] == texts[1] != texts[2] and all(texts)
    (error,) = post(emu, {"taskType": "imageCaption", "taskUUID": tid()}).json()["errors"]
    assert (error["code"], error["parameter"]) == ("invalidInputImage", "inputImage")


def test_media_storage_placeholder_then_get_response(emu: Emulator):
    emu.set_media_placeholder(2)
    task_uuid = tid()
    task = {
        "taskType": "mediaStorage",
        "taskUUID": task_uuid,
        "operation": "upload",
        "media": b64(make_png(8)),
    }
    first = post(emu, task).json()["data"][0]
    assert (first["mediaUUID"], first["taskUUID"]) == ("1", task_uuid)
    assert emu.upload_count == 1  # stored already: a client that re-sends uploads twice
    poll = {"taskType": "getResponse", "taskUUID": task_uuid}
    assert post(emu, poll).json()["data"][0]["mediaUUID"] == "1"
    real = post(emu, poll).json()["data"][0]
    assert real["status"] == "success" and emu.holds(real["mediaUUID"])
    assert post(emu, poll).json()["data"][0]["mediaUUID"] == real["mediaUUID"]
    post(emu, {**task, "taskUUID": tid()})
    assert emu.upload_count == 2
    with pytest.raises(ValueError):
        emu.set_media_placeholder(-1)


def test_media_storage_delete_then_use_is_refused(emu: Emulator):
    image = upload(emu, 9)
    deleted = post(
        emu, {"taskType": "mediaStorage", "taskUUID": tid(), "operation": "delete", "media": image}
    ).json()["data"][0]
    assert deleted["mediaUUID"] == image and not emu.holds(image)
    task = task_with("imageInference", "inputs.referenceImages[].image", [image])
    (error,) = post(emu, task).json()["errors"]
    assert error["parameter"] == "inputs.referenceImages[0].image"


def test_the_date_header_follows_the_emulator_clock(emu: Emulator):
    first = post(emu, {"taskType": "ping", "taskUUID": tid()})
    assert parsedate_to_datetime(first.headers["Date"]).timestamp() == T0
    emu.advance(days=3)
    later = httpx.get(emu.control_url + "/stats")
    assert parsedate_to_datetime(later.headers["Date"]).timestamp() == T0 + 3 * DAY


# ------------------------------------------------------------- the state file


def test_two_emulators_on_one_state_file_lose_nothing(tmp_path: Path):
    state = tmp_path / "emu.json"
    with (
        Emulator(api_key=KEY, start_time=T0, frozen=True, state_path=state) as one,
        Emulator(api_key=KEY, start_time=T0, frozen=True, state_path=state) as two,
    ):
        made = [upload(one, 10), upload(two, 11), upload(one, 12), upload(two, 13)]
        doomed = upload(one, 14)
        assert two.holds(doomed)  # seen through the file
        assert two.delete(doomed)
        upload(one, 15)  # one writes again: the deletion must survive its merge
        assert not one.holds(doomed)
        one.advance(days=2)
        assert two.holds(made[1])  # any request or look merges the file first
        assert two.clock() == T0 + 2 * DAY  # the clock further ahead wins
    reopened = Emulator(api_key=KEY, frozen=True, state_path=state)
    held = {i.uuid for i in reopened.images()}
    assert set(made) <= held and doomed not in held
    assert reopened.persisted_counters()["upload_count"] == 6
    saved = json.loads(state.read_text())
    assert saved["version"] == 2 and doomed in saved["deleted"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "is corrupt"),
        (json.dumps([1, 2]), "is corrupt"),
        (json.dumps({"version": 3, "clock": {"now": 0, "wall": 0}, "images": []}), "version 3"),
        (json.dumps({"version": 2, "clock": "soon", "images": []}), "is corrupt"),
        (
            json.dumps({"version": 2, "clock": {"now": 0, "wall": 0}, "images": [{"uuid": "x"}]}),
            "bad image record",
        ),
    ],
)
def test_an_unusable_state_file_is_one_line_naming_it(tmp_path: Path, content: str, reason: str):
    state = tmp_path / "emu.json"
    state.write_text(content)
    with pytest.raises(EmulatorStateError) as caught:
        Emulator(api_key=KEY, state_path=state)
    message = str(caught.value)
    assert str(state) in message and reason in message and "\n" not in message
    assert (
        hashlib.sha256(state.read_bytes()).hexdigest()
        == hashlib.sha256(content.encode()).hexdigest()
    )  # left as it was


def test_a_version_1_state_file_is_still_read(tmp_path: Path):
    state = tmp_path / "emu.json"
    image = {
        "uuid": str(uuid.uuid4()),
        "format": "png",
        "size": 10,
        "sha256": "0" * 64,
        "uploaded_at": T0,
        "last_used_at": T0,
    }
    state.write_text(
        json.dumps({"version": 1, "clock": {"now": T0, "wall": T0}, "images": [image]})
    )
    emulator = Emulator(api_key=KEY, frozen=True, state_path=state)
    assert emulator.holds(image["uuid"]) and emulator.clock() == T0
