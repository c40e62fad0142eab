"""The map of image parameters and its walker (pure: no cache, no server)."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import pytest

from assetcache._taskmap import TASK_PARAMS, find, match, params_for, parse, replace

ISSUE_LIST = {
    "imageInference": [
        "seedImage",
        "maskImage",
        "referenceImages[]",
        "controlNet[].guideImage",
        "ipAdapters[].guideImage",
        "ipAdapters[].guideImages[]",
        "acePlusPlus.inputImages[]",
        "acePlusPlus.inputMasks[]",
        "puLID.inputImages[]",
        "photoMaker.inputImages[]",
        "photoMaker.images[]",
        "instantID.inputImage",
        "instantID.inputImages[]",
        "instantID.poseImage",
        "regions[].mask",
        "inputs.image",
        "inputs.images[]",
        "inputs.seedImage",
        "inputs.mask",
        "inputs.maskImage",
        "inputs.referenceImages[]",
        "inputs.referenceImages[].image",
        "inputs.references[]",
        "inputs.superResolutionReferences[]",
    ],
    "videoInference": [
        "frameImages[].inputImage",
        "frameImages[]",
        "referenceImages[]",
        "inputs.frameImages[]",
        "inputs.frames[].image",
        "inputs.referenceImages[]",
    ],
}
UTILITIES = [
    "upscale",
    "removeBackground",
    "caption",
    "controlNetPreprocess",
    "imageMasking",
    "vectorize",
]


@pytest.mark.parametrize("task_type", sorted(ISSUE_LIST))
def test_the_map_holds_every_listed_parameter(task_type: str) -> None:
    assert set(ISSUE_LIST[task_type]) <= set(TASK_PARAMS[task_type])


@pytest.mark.parametrize("task_type", UTILITIES)
def test_utilities_take_input_images(task_type: str) -> None:
    assert {"inputImage", "inputImages[]", "inputs.image"} <= set(TASK_PARAMS[task_type])


def test_every_path_parses() -> None:
    for paths in TASK_PARAMS.values():
        for path in paths:
            assert parse(path)
    with pytest.raises(ValueError):
        parse("controlNet[0]..guide")


def test_names_like_runware() -> None:
    task = {
        "taskType": "imageInference",
        "seedImage": "a.png",
        "referenceImages": ["r0", None, "r2", "r3"],
        "controlNet": [{"guideImage": "g0"}, {"model": "no guide"}, {"guideImage": "g2"}],
        "ipAdapters": [{"guideImages": ["i0", "i1"]}],
        "regions": [{"mask": "m0"}],
        "inputs": {"referenceImages": ["s0", {"image": "o1"}], "mask": "mk"},
        "instantID": {"poseImage": "p"},
        "positivePrompt": "not an image",
    }
    assert dict(find(task)) == {
        "seedImage": "a.png",
        "referenceImages[0]": "r0",
        "referenceImages[2]": "r2",
        "referenceImages[3]": "r3",
        "controlNet[0].guideImage": "g0",
        "controlNet[2].guideImage": "g2",
        "ipAdapters[0].guideImages[0]": "i0",
        "ipAdapters[0].guideImages[1]": "i1",
        "regions[0].mask": "m0",
        "inputs.referenceImages[0]": "s0",
        "inputs.referenceImages[1].image": "o1",
        "inputs.mask": "mk",
        "instantID.poseImage": "p",
    }


def test_video_frames_as_strings_or_objects() -> None:
    task = {
        "taskType": "videoInference",
        "frameImages": ["f0", {"inputImage": "f1", "frame": "last"}],
        "inputs": {"frames": [{"image": "x"}], "frameImages": ["y"]},
    }
    assert dict(find(task)) == {
        "frameImages[0]": "f0",
        "frameImages[1].inputImage": "f1",
        "inputs.frames[0].image": "x",
        "inputs.frameImages[0]": "y",
    }


def test_replace_copies_only_the_way_and_leaves_the_callers_task() -> None:
    shared = {"model": "m"}
    task = {
        "taskType": "imageInference",
        "referenceImages": ("a", "b"),
        "controlNet": [{"guideImage": "g", "extra": shared}],
        "lora": [shared],
    }
    out = replace(task, {"referenceImages[1]": "U1", "controlNet[0].guideImage": "U2"})
    assert out["referenceImages"] == ("a", "U1")
    assert out["controlNet"][0] == {"guideImage": "U2", "extra": shared}
    assert task["referenceImages"] == ("a", "b") and task["controlNet"][0]["guideImage"] == "g"
    assert out["lora"] is task["lora"]  # untouched branches are shared, not copied


def test_sdk_objects_are_walked_by_attribute() -> None:
    @dataclasses.dataclass
    class Ref:
        image: Any

    @dataclasses.dataclass
    class Inputs:
        referenceImages: list[Any]

    @dataclasses.dataclass
    class Request:
        seedImage: Any = None
        inputs: Any = None

    req = Request(seedImage="s.png", inputs=Inputs(["u", Ref("r.png")]))
    paths = params_for("imageInference")
    found = find(req, paths)
    assert dict(found) == {
        "seedImage": "s.png",
        "inputs.referenceImages[0]": "u",
        "inputs.referenceImages[1].image": "r.png",
    }
    out = replace(req, {"seedImage": "S", "inputs.referenceImages[1].image": "R"}, paths)
    assert out.seedImage == "S" and out.inputs.referenceImages[1].image == "R"
    assert req.seedImage == "s.png" and req.inputs.referenceImages[1].image == "r.png"


def test_dict_subclasses_and_extra_params() -> None:
    task = collections.OrderedDict(taskType="newTask", styleRefs=[{"ref": "a"}])
    assert find(task) == []
    assert find(task, {"newTask": ["styleRefs[].ref"]}) == [("styleRefs[0].ref", "a")]
    assert find(task, ["styleRefs[].ref"]) == [("styleRefs[0].ref", "a")]
    assert find(task, {"*": "styleRefs[].ref"}) == [("styleRefs[0].ref", "a")]
    out = replace(task, {"styleRefs[0].ref": "U"}, ["styleRefs[].ref"])
    assert out["styleRefs"][0]["ref"] == "U" and task["styleRefs"][0]["ref"] == "a"


@pytest.mark.parametrize(
    ("parameter", "expected"),
    [
        ("referenceImages[2]", ["referenceImages[2]"]),
        ("referenceImages", ["referenceImages[0]", "referenceImages[2]"]),
        ("referenceImages.2", ["referenceImages[2]"]),
        ("controlNet[0]", ["controlNet[0].guideImage"]),
        ("guideImage", ["controlNet[0].guideImage"]),
        ("inputs.seedImage", ["inputs.seedImage"]),
        ("seedImage", ["inputs.seedImage"]),
        ("inputs.referenceImages", ["inputs.referenceImages[1].image"]),
        ("steps", []),
    ],
)
def test_match(parameter: str, expected: list[str]) -> None:
    names = [
        "inputs.seedImage",
        "referenceImages[0]",
        "referenceImages[2]",
        "controlNet[0].guideImage",
        "inputs.referenceImages[1].image",
    ]
    assert match(parameter, names) == expected
