"""Where Runware tasks take an uploaded image: the map, as data, and its walker.

Each task type lists the paths of its image parameters in a small grammar:
``seedImage`` is a key, ``referenceImages[]`` every element of an array,
``controlNet[].guideImage`` a key inside every element, ``inputs.image`` a
key inside an object. A path that ends at an element (``frameImages[]``)
takes a bare value there; an element that is an object is reached by a longer
path (``frameImages[].inputImage``), so both forms of one parameter can be
listed side by side.

The walker names every place it visits the way Runware's errors name it
(``referenceImages[3]``, ``inputs.referenceImages[1].image``), reads both
plain JSON (dicts and lists) and the dataclass request objects of the
WebSocket SDK (attributes), and rewrites a task without touching the
caller's: each container on the way to a changed value is copied.

>>> find({"taskType": "imageInference", "referenceImages": ["a.png", "b.png"]})
[('referenceImages[0]', 'a.png'), ('referenceImages[1]', 'b.png')]
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

#: Image parameters every image-to-image utility takes.
_UTILITY = ("inputImage", "inputImages[]", "inputs.image", "inputs.images[]")

#: ``inputs`` of the newer API revision: strings, or ``{"image": ...}`` objects.
_INPUTS = (
    "inputs.image",
    "inputs.images[]",
    "inputs.images[].image",
    "inputs.seedImage",
    "inputs.mask",
    "inputs.maskImage",
    "inputs.referenceImages[]",
    "inputs.referenceImages[].image",
    "inputs.references[]",
    "inputs.references[].image",
    "inputs.superResolutionReferences[]",
    "inputs.superResolutionReferences[].image",
)

_IMAGE_INFERENCE = (
    "seedImage",
    "maskImage",
    "referenceImages[]",
    "referenceImages[].image",
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
    *_INPUTS,
)

_VIDEO_INFERENCE = (
    "frameImages[]",
    "frameImages[].inputImage",
    "referenceImages[]",
    "referenceImages[].image",
    "inputs.frameImages[]",
    "inputs.frameImages[].inputImage",
    "inputs.frameImages[].image",
    "inputs.frames[].image",
    "inputs.referenceImages[]",
    "inputs.referenceImages[].image",
    "inputs.image",
    "inputs.images[]",
)

#: Task type -> paths of the parameters that take an uploaded image. Aliases
#: (the WebSocket SDK's names, older task names) share their entries.
TASK_PARAMS: Mapping[str, tuple[str, ...]] = {
    "imageInference": _IMAGE_INFERENCE,
    "photoMaker": ("inputImages[]", "images[]", *_INPUTS),
    "videoInference": _VIDEO_INFERENCE,
    **dict.fromkeys(
        (
            "upscale",
            "imageUpscale",
            "removeBackground",
            "imageBackgroundRemoval",
            "caption",
            "imageCaption",
            "controlNetPreprocess",
            "imageControlNetPreProcess",
            "imageMasking",
            "vectorize",
            "imageVectorize",
        ),
        _UTILITY,
    ),
}

_STEP = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\[\])?$")
_SPLIT = re.compile(r"[.\[\]]+")

#: A parsed path: each step is (key, each) — ``each``: iterate the array at ``key``.
Steps = tuple[tuple[str, bool], ...]
_PARSED: dict[str, Steps] = {}


def parse(path: str) -> Steps:
    """``controlNet[].guideImage`` -> ``(("controlNet", True), ("guideImage", False))``."""
    steps = _PARSED.get(path)
    if steps is not None:
        return steps
    out: list[tuple[str, bool]] = []
    for part in path.split("."):
        match = _STEP.match(part.strip())
        if match is None:
            raise ValueError(
                f"bad image parameter path {path!r}: use names, dots and [] "
                "(like 'controlNet[].guideImage')"
            )
        out.append((match.group(1), bool(match.group(2))))
    steps = tuple(out)
    _PARSED[path] = steps
    return steps


def params_for(
    task_type: object, extra: Mapping[str, Iterable[str]] | Iterable[str] | None = None
) -> tuple[str, ...]:
    """The paths to walk for ``task_type``: the map's, plus ``extra``.

    ``extra`` is either a mapping (task type -> paths, ``"*"`` for every type)
    or a plain list of paths for every task.
    """
    if not extra:
        return TASK_PARAMS.get(task_type, ()) if isinstance(task_type, str) else ()
    paths = list(TASK_PARAMS.get(task_type, ())) if isinstance(task_type, str) else []
    if extra:
        if isinstance(extra, Mapping):
            added: list[str] = []
            for key in (task_type, "*"):
                if isinstance(key, str) and key in extra:
                    more = extra[key]
                    added.extend([more] if isinstance(more, str) else more)
        else:
            added = [extra] if isinstance(extra, str) else list(extra)
        for p in added:
            parse(p)  # a bad path is a configuration error, raised here
            if p not in paths:
                paths.append(p)
    return tuple(paths)


def task_type_of(task: Any) -> object:
    return _get(task, "taskType")


# -- the walker -------------------------------------------------------------------


class _Missing:
    pass


_MISSING = _Missing()


def _get(node: Any, key: str) -> Any:
    if type(node) is dict or isinstance(node, dict):
        return node.get(key, _MISSING)
    if _is_object(node):
        return getattr(node, key, _MISSING)
    return _MISSING


def _is_object(node: Any) -> bool:
    """A request object of an SDK (a dataclass instance), walked by attribute."""
    return hasattr(node, "__dataclass_fields__") and not isinstance(node, type)


def is_container(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is bytes:
        return False
    return (
        kind is dict or kind is list or isinstance(value, (dict, list, tuple)) or _is_object(value)
    )


def _set(node: Any, key: str, value: Any) -> Any:
    """A shallow copy of ``node`` with ``key`` set to ``value``."""
    if isinstance(node, dict):
        out = dict(node)
        out[key] = value
        return out
    out = copy.copy(node)
    setattr(out, key, value)
    return out


def visit(task: Any, paths: Iterable[str], fn: Callable[[str, Any], Any]) -> Any:
    """Call ``fn(name, value)`` at every non-empty leaf along ``paths``; the task
    with each leaf replaced by what ``fn`` returned (copied where it changed,
    the very same object where nothing did)."""
    for path in paths:
        task = _visit(task, parse(path), 0, "", fn)
    return task


def _visit(node: Any, steps: Steps, i: int, prefix: str, fn: Callable[[str, Any], Any]) -> Any:
    key, each = steps[i]
    value = _get(node, key)
    if value is _MISSING or value is None:
        return node
    name = f"{prefix}.{key}" if prefix else key
    last = i == len(steps) - 1
    if each and isinstance(value, (list, tuple)):
        items = list(value)
        changed = False
        for n, item in enumerate(items):
            if item is None:
                continue
            here = f"{name}[{n}]"
            if last:
                if is_container(item):
                    continue  # an object element: a longer path reaches into it
                new = fn(here, item)
            elif is_container(item):
                new = _visit(item, steps, i + 1, here, fn)
            else:
                continue
            if new is not item:
                items[n] = new
                changed = True
        if not changed:
            return node
        return _set(node, key, type(value)(items) if isinstance(value, tuple) else items)
    if last:
        if is_container(value):
            return node
        new = fn(name, value)
    elif each:
        return node  # an array expected; a lone object is not walked into
    else:
        if not is_container(value) or isinstance(value, (list, tuple)):
            return node
        new = _visit(value, steps, i + 1, name, fn)
    return node if new is value else _set(node, key, new)


#: Task type (and extra paths) -> the paths grouped by their first key.
_BY_HEAD: dict[tuple[str, ...], dict[str, tuple[str, ...]]] = {}


def _by_head(paths: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    grouped = _BY_HEAD.get(paths)
    if grouped is None:
        heads: dict[str, list[str]] = {}
        for path in paths:
            heads.setdefault(parse(path)[0][0], []).append(path)
        grouped = {k: tuple(v) for k, v in heads.items()}
        if len(_BY_HEAD) < 256:
            _BY_HEAD[paths] = grouped
    return grouped


def find(
    task: Any, extra: Mapping[str, Iterable[str]] | Iterable[str] | None = None
) -> list[tuple[str, Any]]:
    """``[(name, value), ...]`` of every image parameter set in ``task``."""
    found: list[tuple[str, Any]] = []

    def note(name: str, value: Any) -> Any:
        found.append((name, value))
        return value

    kind = task.get("taskType") if type(task) is dict else task_type_of(task)
    grouped = _by_head(params_for(kind, extra))
    # Only the parameters the task sets are walked (a task sets a few of dozens).
    keys = task.keys() if isinstance(task, dict) else list(grouped)
    for key in keys:
        paths = grouped.get(key)
        if paths is not None and _get(task, key) is not None:
            for path in paths:
                _visit(task, parse(path), 0, "", note)
    return found


def replace(
    task: Any,
    values: Mapping[str, Any],
    extra: Mapping[str, Iterable[str]] | Iterable[str] | None = None,
) -> Any:
    """``task`` with the leaves named in ``values`` (names :func:`find` gave)
    replaced; each container on the way is copied once, the caller's untouched."""
    if not values:
        return task
    copies: dict[int, Any] = {}

    def own(node: Any) -> Any:
        copied = copies.get(id(node))
        if copied is None:
            copied = _shallow(node)
            copies[id(node)] = copied
            copies[id(copied)] = copied  # a copy is ours already
        return copied

    child, put = _child, _put
    root = own(task)
    tuples: list[tuple[Any, str, Any]] = []
    for name, value in values.items():
        steps = tokens(name)
        node = root
        for token in steps[:-1]:
            original = child(node, token)
            mine = own(original)
            if mine is not original:
                put(node, token, mine)
                if isinstance(original, tuple):
                    tuples.append((node, token, mine))
            node = mine
        put(node, steps[-1], value)
    for parent, token, items in tuples:
        put(parent, token, tuple(items))
    return root


def _shallow(node: Any) -> Any:
    if type(node) is dict:
        return dict(node)
    if isinstance(node, (list, tuple)):
        return list(node)
    return copy.copy(node)


def _child(node: Any, token: str) -> Any:
    if isinstance(node, list):
        return node[int(token)]
    return node[token] if isinstance(node, dict) else getattr(node, token)


def _put(node: Any, token: str, value: Any) -> None:
    if isinstance(node, list):
        node[int(token)] = value
    elif isinstance(node, dict):
        node[token] = value
    else:
        setattr(node, token, value)


# -- naming -----------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def tokens(name: str) -> tuple[str, ...]:
    """``inputs.referenceImages[1].image`` -> ``("inputs", "referenceImages", "1", "image")``;
    also reads ``referenceImages.1`` and ``referenceImages/1``."""
    return tuple(t for t in _SPLIT.split(name.strip().replace("/", ".")) if t)


def names_of(name: str) -> tuple[str, ...]:
    """The named steps of a path, indices dropped."""
    return tuple(t for t in tokens(name) if not t.isdigit())


def match(parameter: str, names: Iterable[str]) -> list[str]:
    """Which of the concrete ``names`` a server's ``parameter`` designates.

    In tiers, the first that matches wins: the same path (or a path inside
    it, ``controlNet[0]``); the same parameter without indices
    (``referenceImages`` names every ``referenceImages[n]``); one word that
    any step of a name carries (``seedImage`` for ``inputs.seedImage``).
    """
    want = tokens(parameter)
    if not want:
        return []
    names = list(names)
    exact = [n for n in names if tokens(n)[: len(want)] == want]
    if exact:
        return exact
    plain = tuple(w.lower() for w in want if not w.isdigit())
    if len(plain) == len(want):
        same = [n for n in names if tuple(s.lower() for s in names_of(n)) == plain]
        if same:
            return same
        inside = [n for n in names if tuple(s.lower() for s in names_of(n))[: len(plain)] == plain]
        if inside:
            return inside
    if len(plain) == 1:
        return [n for n in names if plain[0] in (s.lower() for s in names_of(n))]
    tail = [n for n in names if tuple(s.lower() for s in names_of(n))[-len(plain) :] == plain]
    return tail
