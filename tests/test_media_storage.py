"""mediaStorage: a placeholder answer is polled, never re-sent; retention per task kind."""

from __future__ import annotations

import json
import uuid as uuid_mod
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FAST_RETRY
from helpers import API_KEY, make_png

from assetcache import AssetCache, ConfigurationError, RemoteError


class SlowStorage:
    """A server whose mediaStorage answers "1" (still processing) at first."""

    def __init__(self, ready_after: int) -> None:
        self.ready_after = ready_after
        self.uploads: list[dict[str, Any]] = []
        self.polls: list[dict[str, Any]] = []
        self.media: dict[str, str] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        data = []
        for task in json.loads(request.content):
            if task["taskType"] == "ping":  # the cache asks the server's time now and then
                data.append({"taskType": "ping", "pong": True})
                continue
            tid = task["taskUUID"]
            if task["taskType"] == "mediaStorage":
                self.uploads.append(task)
                self.media[tid] = str(uuid_mod.uuid4())
                data.append(
                    {
                        "taskType": "mediaStorage",
                        "taskUUID": tid,
                        "operation": "upload",
                        "mediaUUID": "1",
                    }
                )
            elif task["taskType"] == "getResponse":
                self.polls.append(task)
                ready = len(self.polls) >= self.ready_after
                data.append(
                    {
                        "taskType": "mediaStorage",
                        "taskUUID": tid,
                        "operation": "upload",
                        "status": "success" if ready else "processing",
                        "mediaUUID": self.media[tid] if ready else "1",
                    }
                )
        return httpx.Response(200, json={"data": data})


def make(tmp_path: Path, server: SlowStorage, **kwargs: Any) -> AssetCache:
    return AssetCache(
        API_KEY,
        base_url="http://127.0.0.1:9/v1",
        db_path=tmp_path / "c.db",
        upload_task="mediaStorage",
        transport=httpx.MockTransport(server),
        retry=FAST_RETRY,
        sleep=lambda s: None,
        **kwargs,
    )


def test_placeholder_is_polled_not_sent_again(tmp_path: Path) -> None:
    server = SlowStorage(ready_after=3)
    with make(tmp_path, server) as cache:
        res = cache.resolve(make_png(1))
        assert res.uuid == next(iter(server.media.values()))
        assert len(server.uploads) == 1  # one upload, never re-sent
        assert len(server.polls) == 3
        assert {p["taskUUID"] for p in server.polls} == {server.uploads[0]["taskUUID"]}
        assert cache.resolve(make_png(1)).outcome == "hit"


def test_polling_is_bounded(tmp_path: Path) -> None:
    server = SlowStorage(ready_after=10_000)
    with make(tmp_path, server) as cache:
        out = cache.resolve_many([make_png(2)])
        assert isinstance(out[0].error, RemoteError)
        assert "still processing" in str(out[0].error)
        assert len(server.uploads) == 1
        assert len(server.polls) == FAST_RETRY.attempts


def test_retention_per_upload_task(tmp_path: Path) -> None:
    server = SlowStorage(ready_after=1)
    retention = {"imageUpload": timedelta(days=30), "mediaStorage": timedelta(days=7)}
    with make(tmp_path, server, retention=retention) as cache:
        assert cache.settings()["retention_seconds"] == 7 * 86400
        assert cache.settings()["retention_basis"] == "configured"
    with AssetCache(API_KEY, db_path=tmp_path / "d.db", retention=retention) as cache:
        assert cache.settings()["retention_seconds"] == 30 * 86400
    with pytest.raises(ConfigurationError, match="per upload task"):
        AssetCache(API_KEY, db_path=tmp_path / "e.db", retention={"upload": 3})


def test_doctor_says_media_storage_retention_is_an_assumption(tmp_path: Path) -> None:
    server = SlowStorage(ready_after=1)
    with make(tmp_path, server) as cache:
        report = cache.doctor()
        assert report.settings["retention_basis"] == "assumed"
        assert "assumption" in report.settings["retention_note"]
    with AssetCache(API_KEY, db_path=tmp_path / "i.db") as cache:
        assert cache.doctor().settings["retention_basis"] == "documented"


def test_doctor_command_prints_the_basis(tmp_path: Path) -> None:
    from cli_support import invoke

    db = tmp_path / "cli.db"
    out = invoke("--db", db, "--upload-task", "mediaStorage", "doctor").output
    assert "basis" in out and "assumption, not a documented fact" in out
    out = invoke("--db", db, "doctor").output
    assert "mediaStorage's retention is an assumption" in out
