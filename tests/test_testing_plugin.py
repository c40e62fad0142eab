"""The pytest plugin, used the way a downstream project uses it: no imports, two fixtures.

Each test writes a small project with pytester and runs pytest on it in a
subprocess, so the plugin is found through its ``pytest11`` entry point as
in any environment where assetcache is installed.
"""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

PNG_HELPER = """
import struct, zlib

def png(seed):
    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))
    rows = b"".join(b"\\x00" + bytes((seed + y + x) % 256 for x in range(6)) for y in range(2))
    return (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
"""


def test_the_plugin_is_registered_as_a_pytest11_entry_point():
    (plugin,) = [ep for ep in entry_points(group="pytest11") if ep.value == "assetcache.testing"]
    assert plugin.load().__name__ == "assetcache.testing"


def test_a_downstream_pipeline_test_runs_offline(pytester: pytest.Pytester):
    pytester.makepyfile(helpers=PNG_HELPER)
    pytester.makepyfile(
        test_pipeline="""
        from uuid import uuid4

        import httpx
        from helpers import png

        def test_upload_once_then_expire(asset_cache, runware_emulator, tmp_path):
            photo = tmp_path / "cat.png"
            photo.write_bytes(png(1))
            first = asset_cache.resolve(photo)
            assert runware_emulator.holds(first.uuid)
            assert asset_cache.resolve(photo).uuid == first.uuid
            assert runware_emulator.upload_count == 1
            runware_emulator.advance(days=31)
            again = asset_cache.resolve(photo)
            assert again.uuid != first.uuid and runware_emulator.upload_count == 2

        def test_a_deleted_upload_is_refused_by_the_task(asset_cache, runware_emulator, tmp_path):
            photo = tmp_path / "dog.png"
            photo.write_bytes(png(2))
            uuid = asset_cache.resolve(photo).uuid
            assert runware_emulator.delete(uuid)
            task = {"taskType": "imageInference", "taskUUID": str(uuid4()),
                    "model": "runware:100@1", "positivePrompt": "x", "seedImage": uuid}
            answer = httpx.post(runware_emulator.base_url, json=[task],
                                headers={"Authorization": "Bearer any-key"})
            assert answer.json()["errors"][0]["code"] == "invalidSeedImage"

        def test_the_clock_is_frozen_and_shared(asset_cache, runware_emulator):
            before = runware_emulator.clock()
            runware_emulator.advance(hours=2)
            assert runware_emulator.clock() == before + 7200
            assert runware_emulator.ws_url.startswith("ws://127.0.0.1:")
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_emulator_options_can_be_overridden_in_a_conftest(pytester: pytest.Pytester):
    pytester.makepyfile(helpers=PNG_HELPER)
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def runware_emulator_options():
            return {"media_placeholder": 1}
        """
    )
    pytester.makepyfile(
        test_media="""
        import base64, uuid
        import httpx
        from helpers import png

        def test_placeholder_then_get_response(runware_emulator):
            task_uuid = str(uuid.uuid4())
            upload = {"taskType": "mediaStorage", "taskUUID": task_uuid, "operation": "upload",
                      "media": base64.b64encode(png(3)).decode()}
            post = lambda tasks: httpx.post(runware_emulator.base_url, json=tasks,
                                            headers={"Authorization": "Bearer k"}).json()
            assert post([upload])["data"][0]["mediaUUID"] == "1"
            real = post([{"taskType": "getResponse", "taskUUID": task_uuid}])["data"][0]
            assert runware_emulator.holds(real["mediaUUID"])
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_failing_downstream_assertion_fails_and_the_emulator_still_stops(
    pytester: pytest.Pytester,
):
    pytester.makepyfile(
        test_fail="""
        import socket

        PORTS = []

        def test_records_port(runware_emulator):
            PORTS.append(runware_emulator.port)
            assert runware_emulator.upload_count == 1  # nothing was uploaded: fails

        def test_port_was_released():
            try:
                socket.create_connection(("127.0.0.1", PORTS[0]), timeout=1).close()
            except OSError:
                return
            raise AssertionError("the emulator of the failed test still listens")
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*upload_count == 1*"])


def test_the_readme_plugin_example_passes_as_written(pytester: pytest.Pytester):
    pytest.importorskip("PIL")  # the example draws its test image with Pillow
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"<!-- plugin-example -->\n```python\n(.*?)```", readme, re.S)
    assert block, "the README lost its plugin example"
    pytester.makepyfile(test_pipeline=block[1])
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
