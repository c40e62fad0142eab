"""Which task parameters name an uploaded (or generated) image: the server's own map.

The emulator keeps its own copy of this map, written from Runware's API
reference (``/work/shared/runware-api.md``, "Parameters that take an uploaded
image"), and never imports the client's: a parameter missing on one side
must show up as a failing test, not as two sides agreeing.

A path is dotted; ``name[]`` is an array whose every entry is an image;
``name[]{key}`` is an array whose entries are either an image or an object
holding the image under ``key`` (``inputs.referenceImages`` takes strings or
``{"image": ...}``; ``frameImages`` takes strings or ``{"inputImage": ...}``).

    >>> [p for p, _ in references({"controlNet": [{"guideImage": "x"}]}, "imageInference")]
    ['controlNet[0].guideImage']
    >>> error_code("inputs.referenceImages[1].image")
    'invalidReferenceImages'
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

_INPUT_IMAGE = ("inputImage", "inputImages[]", "inputs.image")

IMAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "imageInference": (
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
        "inputs.referenceImages[]{image}",
        "inputs.references[]{image}",
        "inputs.superResolutionReferences[]{image}",
    ),
    "photoMaker": ("inputImages[]",),
    "upscale": _INPUT_IMAGE,
    "imageUpscale": _INPUT_IMAGE,
    "removeBackground": _INPUT_IMAGE,
    "imageBackgroundRemoval": _INPUT_IMAGE,
    "caption": _INPUT_IMAGE,
    "imageCaption": _INPUT_IMAGE,
    "controlNetPreprocess": _INPUT_IMAGE,
    "imageControlNetPreProcess": _INPUT_IMAGE,
    "imageMasking": _INPUT_IMAGE,
    "vectorize": _INPUT_IMAGE,
    "imageVectorize": _INPUT_IMAGE,
    "videoInference": (
        "frameImages[]{inputImage}",
        "referenceImages[]",
        "inputs.frameImages[]{image}",
        "inputs.frames[].image",
        "inputs.referenceImages[]{image}",
    ),
}

#: Task types that make no sense without an input image (all but the generators).
NEEDS_IMAGE = frozenset(IMAGE_PARAMS) - {"imageInference", "videoInference", "photoMaker"}

#: Yielded for an array parameter whose value is not an array.
NOT_AN_ARRAY = object()

_SEGMENT = re.compile(r"^(?P<name>\w+)(?P<array>\[\](?:\{(?P<key>\w+)\})?)?$")


def references(task: dict[str, Any], task_type: str) -> Iterator[tuple[str, object]]:
    """Every (parameter path, value) of ``task`` that names an image, in map order.

    A value of the wrong shape is yielded too, so the caller can refuse it by
    path: an object where an image goes as it is, anything but a list where an
    array goes as :data:`NOT_AN_ARRAY`.
    ``None`` counts as absent.
    """
    for path in IMAGE_PARAMS.get(task_type, ()):
        yield from _walk(task, path.split("."), "")


def _walk(node: object, segments: list[str], prefix: str) -> Iterator[tuple[str, object]]:
    match = _SEGMENT.match(segments[0])
    if match is None or not isinstance(node, dict):
        return
    name, array, key = match["name"], match["array"], match["key"]
    value = node.get(name)
    if value is None:
        return
    here = f"{prefix}.{name}" if prefix else name
    rest = segments[1:]
    if not array:
        if rest:
            yield from _walk(value, rest, here)
        else:
            yield here, value
        return
    if not isinstance(value, list):
        yield here, NOT_AN_ARRAY
        return
    for index, entry in enumerate(value):
        at = f"{here}[{index}]"
        if rest:
            yield from _walk(entry, rest, at)
        elif key is not None and isinstance(entry, dict):
            if entry.get(key) is not None:
                yield f"{at}.{key}", entry[key]
            else:
                yield at, entry
        else:
            yield at, entry


def error_code(path: str) -> str:
    """``invalid<Param>`` for a path: the innermost named field, or the array it wraps.

    ``controlNet[0].guideImage`` -> ``invalidGuideImage``; ``referenceImages[3]``
    -> ``invalidReferenceImages``; ``frameImages[0].inputImage`` (an entry's
    wrapper key) -> ``invalidFrameImages``.
    """
    parts = path.split(".")
    last = re.sub(r"\[\d+\]$", "", parts[-1])
    if len(parts) > 1 and last in ("image", "inputImage") and re.search(r"\[\d+\]$", parts[-2]):
        last = re.sub(r"\[\d+\]$", "", parts[-2])
    return f"invalid{last[:1].upper()}{last[1:]}"
