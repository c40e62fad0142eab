"""Every form of "Runware no longer has this image" heals the rejected input alone.

The SDKs' error classes are recognised by name and module, never imported:
the stand-ins below carry the real classes' module names and attributes
(``runware-sdk``: ``runware.errors.RunwareError``; the WebSocket SDK:
``runware.utils.RunwareAPIError``). ``tests/sdk/`` runs the real SDKs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import write_images

from assetcache import AssetCache, RejectedInput, RemoteError, UnknownImage
from assetcache.emulator import Emulator


def _sdk_error_class() -> type[Exception]:
    class RunwareError(Exception):
        def __init__(self, code: str, message: str, parameter: str | None = None) -> None:
            super().__init__(message)
            self.code = code
            self.parameter = parameter
            self.status_code = 400
            self.task_uuid = None

    RunwareError.__module__ = "runware.errors"
    return RunwareError


def _ws_error_class() -> type[Exception]:
    class RunwareAPIError(Exception):
        def __init__(self, error_data: dict[str, Any]) -> None:
            self.code = error_data.get("code")
            self.error_data = error_data
            super().__init__(str(error_data))

    RunwareAPIError.__module__ = "runware.utils"
    return RunwareAPIError


SdkError = _sdk_error_class()
WsError = _ws_error_class()


def _response(code: str, parameter: object, status: int = 400) -> httpx.Response:
    body = {"errors": [{"code": code, "parameter": parameter, "message": "no such image"}]}
    request = httpx.Request("POST", "http://127.0.0.1/v1")
    return httpx.Response(status, json=body, request=request)


def _status_error(code: str, parameter: object) -> httpx.HTTPStatusError:
    resp = _response(code, parameter)
    return httpx.HTTPStatusError("400", request=resp.request, response=resp)


def _raise(exc: BaseException) -> Callable[[], Any]:
    def go() -> Any:
        raise exc

    return go


def _return(value: Any) -> Callable[[], Any]:
    return lambda: value


# name -> (how the first answer fails, which parameters must be uploaded again)
FORMS: dict[str, tuple[Callable[[], Callable[[], Any]], set[str]]] = {
    "invalidParam_plain": (
        lambda: _raise(UnknownImage("x", code="invalidMaskImage", parameter="maskImage")),
        {"maskImage"},
    ),
    "invalidParam_dotted": (
        lambda: _raise(
            RejectedInput("x", code="invalidSeedImage", parameter="inputs.seedImage", status=400)
        ),
        {"inputs.seedImage"},
    ),
    "invalidParam_indexed": (
        lambda: _raise(
            RejectedInput(
                "x", code="invalidReferenceImages", parameter="referenceImages[1]", status=400
            )
        ),
        {"referenceImages[1]"},
    ),
    "invalidParam_array": (
        lambda: _return({"errors": [{"code": "invalidMaskImage", "parameter": ["maskImage"]}]}),
        {"maskImage"},
    ),
    "invalidParam_guide": (
        lambda: _raise(
            RejectedInput(
                "x", code="invalidGuideImage", parameter="controlNet[0].guideImage", status=400
            )
        ),
        {"controlNet[0].guideImage"},
    ),
    "mediaNotFound": (
        lambda: _raise(RemoteError("x", code="mediaNotFound", parameter="maskImage", status=404)),
        {"maskImage"},
    ),
    "mediaExpired": (
        lambda: _raise(RemoteError("x", code="mediaExpired", parameter="referenceImages[0]")),
        {"referenceImages[0]"},
    ),
    "anyNotFound": (
        lambda: _raise(RemoteError("x", code="imageNotFound", parameter="seedImage")),
        {"inputs.seedImage"},
    ),
    "anyExpired": (
        lambda: _raise(RemoteError("x", code="uploadExpired", parameter="maskImage")),
        {"maskImage"},
    ),
    "runware_sdk_notFound": (
        lambda: _raise(SdkError("notFound", "gone", parameter="maskImage")),
        {"maskImage"},
    ),
    "runware_sdk_validation": (
        lambda: _raise(SdkError("validation", "bad", parameter="referenceImages")),
        {"referenceImages[0]", "referenceImages[1]"},
    ),
    "ws_sdk_RunwareAPIError": (
        lambda: _raise(
            WsError({"code": "invalidMaskImage", "parameter": "maskImage", "message": "x"})
        ),
        {"maskImage"},
    ),
    "httpx_response": (
        lambda: _return(_response("invalidSeedImage", "inputs.seedImage")),
        {"inputs.seedImage"},
    ),
    "httpx_status_error": (
        lambda: _raise(_status_error("invalidMaskImage", "maskImage")),
        {"maskImage"},
    ),
    "wrapped_in_callers_error": (
        lambda: _raise(_chained(SdkError("notFound", "gone", parameter="maskImage"))),
        {"maskImage"},
    ),
    "unnamed_parameter": (
        lambda: _raise(RemoteError("x", code="mediaNotFound")),
        {
            "inputs.seedImage",
            "maskImage",
            "referenceImages[0]",
            "referenceImages[1]",
            "controlNet[0].guideImage",
        },
    ),
}


def _chained(inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except Exception as exc:
            raise RuntimeError("my app failed") from exc
    except RuntimeError as outer:
        return outer


@pytest.fixture
def task(tmp_path: Path) -> dict[str, Any]:
    paths = write_images(tmp_path, *range(5))
    return {
        "taskType": "imageInference",
        "inputs": {"seedImage": paths[0]},
        "maskImage": paths[1],
        "referenceImages": [paths[2], paths[3]],
        "controlNet": [{"guideImage": paths[4]}],
    }


@pytest.mark.parametrize("form", sorted(FORMS))
def test_form_heals_only_the_rejected(
    form: str, cache: AssetCache, emu: Emulator, task: dict[str, Any]
) -> None:
    make_failure, expected = FORMS[form]
    first = cache.prepare(task).uuids
    emu.reset_counters()
    sent: list[dict[str, Any]] = []
    fail = make_failure()

    def send(t: dict[str, Any]) -> str:
        sent.append(t)
        if len(sent) == 1:
            return fail()
        return "done"

    assert cache.run(task, send) == "done"
    assert len(sent) == 2
    assert sent[0]["taskUUID"] != sent[1]["taskUUID"]
    after = cache.prepare(task).uuids
    changed = {name for name in first if first[name] != after[name]}
    assert changed == expected
    assert emu.upload_count == len(expected)


@pytest.mark.parametrize(
    "failure",
    [
        RejectedInput("x", code="invalidSteps", parameter="steps", status=400),
        RemoteError("x", code="insufficientCredits", status=402),
        RemoteError("x", code="taskFailedOrNotFound", parameter="taskUUID"),
        RemoteError("x", code="modelNotFound"),
        SdkError("validation", "bad", parameter="steps"),
        SdkError("quota", "pay"),
        WsError({"code": "invalidSteps", "parameter": "steps"}),
        _status_error("invalidWidth", "width"),
    ],
    ids=lambda e: type(e).__name__ + ":" + str(getattr(e, "code", "")),
)
def test_unrelated_error_does_not_heal(
    failure: BaseException, cache: AssetCache, emu: Emulator, task: dict[str, Any]
) -> None:
    cache.prepare(task)
    emu.reset_counters()
    calls = []

    def send(t: dict[str, Any]) -> None:
        calls.append(t)
        raise failure

    with pytest.raises(type(failure)):
        cache.run(task, send)
    assert len(calls) == 1 and emu.upload_count == 0


def test_unknown_parameter_of_ours_is_not_healed(
    cache: AssetCache, emu: Emulator, task: dict[str, Any]
) -> None:
    """A rejected parameter the cache did not bind (a URL) is the caller's problem."""
    task = {**task, "seedImage": "https://example.com/x.png"}
    cache.prepare(task)
    emu.reset_counters()

    def send(t: dict[str, Any]) -> None:
        raise RemoteError("x", code="invalidSeedImage", parameter="seedImage")

    with pytest.raises(RemoteError):
        cache.run(task, send)
    assert emu.upload_count == 0


@pytest.mark.skipif(importlib.util.find_spec("httpx2") is None, reason="httpx2 is not installed")
def test_httpx2_response_heals(cache: AssetCache, emu: Emulator, task: dict[str, Any]) -> None:
    import httpx2  # type: ignore[import-not-found]

    first = cache.prepare(task).uuids
    emu.reset_counters()
    calls = []

    def send(t: dict[str, Any]) -> Any:
        calls.append(t)
        if len(calls) == 1:
            body = {"errors": [{"code": "invalidMaskImage", "parameter": "maskImage"}]}
            return httpx2.Response(400, json=body)
        return "ok"

    assert cache.run(task, send) == "ok"
    assert cache.prepare(task).uuids["maskImage"] != first["maskImage"]


@pytest.mark.parametrize(
    "form", ["mediaNotFound", "ws_sdk_RunwareAPIError", "runware_sdk_notFound"]
)
def test_use_reads_the_same_rule(
    form: str, cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    (path,) = write_images(tmp_path / "u", 42)
    failures = {
        "mediaNotFound": RemoteError("x", code="mediaNotFound", parameter="seedImage"),
        "ws_sdk_RunwareAPIError": WsError({"code": "invalidSeedImage", "parameter": "seedImage"}),
        "runware_sdk_notFound": SdkError("notFound", "gone", parameter="seedImage"),
    }
    seen: list[str] = []

    def fn(uuid: str) -> str:
        seen.append(uuid)
        if len(seen) == 1:
            raise failures[form]
        return uuid

    assert cache.use(path, fn) == seen[1]
    assert seen[0] != seen[1] and emu.upload_count == 2
