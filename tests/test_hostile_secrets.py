"""Credentials given in odd places stay secret; the CLI's bounds are options.

- ``https://user:password@proxy/v1`` as the API URL: the password is never
  stored (namespace, database), never printed (errors, ``ls``, ``export``,
  ``doctor``, logs) and never replaces the Bearer key on the wire.
- An ``--api-key-file`` open to group or others gets a warning naming the
  file and the fix, as ssh does for keys.
- ``--timeout`` and ``--retries`` bound a CLI run's requests.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cli_support import CLEAN_ENV, invoke, script
from helpers import API_KEY, make_png
from hostile_server import HostileServer, refused_port, trickle

from assetcache import AssetCache
from assetcache.emulator import Emulator

PASSWORD = "pr0xy-S3CRET-pw"
USER = "proxyuser"


def with_credentials(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{USER}:{PASSWORD}@{rest}"


def all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_url_credentials_are_never_stored_and_never_replace_the_key(
    emu: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    db = tmp_path / "c.db"
    # The emulator only answers the Bearer key: an upload that works proves it was sent.
    with AssetCache(API_KEY, base_url=with_credentials(emu.base_url), db_path=db) as cache:
        result = cache.resolve(make_png(1))
        assert result.outcome == "uploaded"
        assert PASSWORD not in cache.namespace and USER not in cache.namespace
        assert PASSWORD not in repr(cache)
        assert PASSWORD not in json.dumps(cache.settings(), default=str)
        exported = "\n".join(cache.export_entries())
        assert PASSWORD not in exported
    assert PASSWORD.encode() not in all_bytes(tmp_path)
    assert PASSWORD not in caplog.text
    # The same account and endpoint without credentials is the same namespace.
    with AssetCache(API_KEY, base_url=emu.base_url, db_path=db) as cache:
        assert cache.resolve(make_png(1)).outcome == "hit"


def test_url_credentials_never_reach_an_error_message(tmp_path: Path) -> None:
    with (
        refused_port() as url,
        AssetCache(API_KEY, base_url=with_credentials(url), db_path=tmp_path / "c.db") as cache,
    ):
        (result,) = cache.resolve_many([make_png(2)])
    assert result.error is not None
    assert PASSWORD not in str(result.error) and USER not in str(result.error)


def test_the_cli_never_prints_url_credentials(emu: Emulator, tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(make_png(3))
    env = {"RUNWARE_API_KEY": API_KEY, "ASSETCACHE_API_URL": with_credentials(emu.base_url)}
    db = tmp_path / "c.db"
    outputs = []
    for args in (
        ["-vv", "upload", image],
        ["ls"],
        ["ls", "--json"],
        ["export"],
        ["doctor"],
        ["doctor", "--json"],
        ["stats"],
    ):
        result = invoke("--db", db, *args, env=env)
        assert result.exit_code == 0, (args, result.output)
        outputs.append(result.output)
    with refused_port() as url:
        failed = invoke(
            "--db",
            db,
            "--api-url",
            with_credentials(url),
            "--retries",
            "0",
            "upload",
            tmp_path / "a.png",
            env={"RUNWARE_API_KEY": API_KEY},
        )
        outputs.append(failed.output)
    for text in outputs:
        assert PASSWORD not in text
        assert f"{USER}:" not in text
    assert PASSWORD.encode() not in all_bytes(tmp_path)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_a_key_file_open_to_others_gets_a_warning(emu: Emulator, tmp_path: Path) -> None:
    key_file = tmp_path / "runware.key"
    key_file.write_text(API_KEY + "\n")
    args = ("--db", tmp_path / "c.db", "--api-url", emu.base_url, "--api-key-file", key_file)
    for mode in (0o644, 0o640, 0o604):
        key_file.chmod(mode)
        result = invoke(*args, "stats")
        assert result.exit_code == 0
        warnings = [line for line in result.stderr.splitlines() if "warning" in line]
        assert len(warnings) == 1, result.stderr
        assert str(key_file) in warnings[0] and "chmod 600" in warnings[0]
        assert API_KEY not in result.output
    key_file.chmod(0o600)
    result = invoke(*args, "stats")
    assert "warning" not in result.stderr


def test_timeout_and_retries_are_cli_options(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(make_png(4))
    with HostileServer(trickle) as server:
        done = subprocess.run(
            [
                script(),
                "--db",
                str(tmp_path / "c.db"),
                "--api-url",
                server.url,
                "--timeout",
                "1",
                "--retries",
                "0",
                "upload",
                str(image),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **{k: v for k, v in os.environ.items() if k not in CLEAN_ENV},
                "RUNWARE_API_KEY": API_KEY,
            },
        )
        assert server.requests == 1  # --retries 0: one attempt
    assert done.returncode == 1, done.stderr
    assert "timed out" in done.stdout and "bounded by 1 s" in done.stdout
    assert "Traceback" not in done.stderr


def test_timeout_and_retries_are_documented_with_their_defaults() -> None:
    text = invoke("--help").output
    assert "--timeout" in text and "--retries" in text
    flat = " ".join(text.split())
    assert "(default 60)" in flat and "(default 7)" in flat
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "--timeout" in readme and "--retries" in readme


def test_bad_cli_values_are_usage_errors() -> None:
    for args in (["--timeout", "0"], ["--timeout", "-1"], ["--retries", "-1"]):
        result = invoke(*args, "stats")
        assert result.exit_code == 2, (args, result.output)


def test_url_credentials_go_out_as_proxy_authorization_beside_the_bearer_key(
    tmp_path: Path,
) -> None:
    import base64
    import uuid

    import httpx

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        tasks = json.loads(request.content)
        data = [
            {"taskType": "imageUpload", "taskUUID": t["taskUUID"], "imageUUID": str(uuid.uuid4())}
            for t in tasks
        ]
        return httpx.Response(200, json={"data": data})

    url = with_credentials("https://proxy.example/v1")
    with AssetCache(
        API_KEY, base_url=url, db_path=tmp_path / "c.db", transport=httpx.MockTransport(handler)
    ) as cache:
        assert cache.resolve(make_png(5)).outcome == "uploaded"
    (request,) = seen
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    pair = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert request.headers["proxy-authorization"] == f"Basic {pair}"
    assert PASSWORD not in str(request.url) and USER not in str(request.url)
