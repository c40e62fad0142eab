"""One import point for the HTTP library: httpx2 when installed, else httpx."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from assetcache import _httpx

HAVE_HTTPX2 = importlib.util.find_spec("httpx2") is not None


def chosen(env: dict[str, str] | None = None) -> str:
    import os

    out = subprocess.run(
        [sys.executable, "-c", "from assetcache._httpx import http; print(http().__name__)"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return out.stdout.strip()


def test_prefers_httpx2_when_installed():
    assert chosen({"ASSETCACHE_HTTP": ""}) == ("httpx2" if HAVE_HTTPX2 else "httpx")


def test_plain_httpx_can_be_forced():
    pytest.importorskip("httpx")
    assert chosen({"ASSETCACHE_HTTP": "httpx"}) == "httpx"


@pytest.mark.parametrize("name", _httpx.MODULES)
def test_responses_and_status_errors_of_both_libraries_are_recognised(name):
    lib = pytest.importorskip(name)
    request = lib.Request("POST", "http://127.0.0.1:9/v1")
    response = lib.Response(400, json={"errors": []}, request=request)
    assert _httpx.is_response(response)
    error = lib.HTTPStatusError("bad", request=request, response=response)
    assert _httpx.is_status_error(error)
    assert not _httpx.is_response(error) and not _httpx.is_status_error(response)
    assert any(isinstance(error, t) for t in _httpx.error_types("HTTPError"))
    assert not _httpx.is_response({"status": 400}) and not _httpx.is_status_error(ValueError())


@pytest.mark.parametrize("name", _httpx.MODULES)
def test_a_callers_transport_picks_its_own_library(name):
    lib = pytest.importorskip(name)

    class Mine(lib.MockTransport):  # a subclass, as tests and apps write them
        pass

    assert _httpx.for_transport(Mine(lambda request: lib.Response(200))) is lib
    assert _httpx.for_transport(None) is _httpx.http()
    assert _httpx.for_transport(object()) is _httpx.http()
