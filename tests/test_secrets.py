"""Secrets: the API key is in no log line, exception, repr, CLI output or byte of
the database; the database is private; the emulator stays on loopback; TLS
certificates are verified.

A representative workload runs with a recognisable key (``helpers.API_KEY``)
at DEBUG logging (assetcache, httpx, httpcore): uploads through faults,
failures of every kind, a server that echoes the key back in its errors, a
server that refuses the key, an unreachable server, the maintenance calls, and
the CLI at ``-vv``. Everything it printed, logged, raised or stored is then
searched for the key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import traceback
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_support import script
from helpers import API_KEY, engine_of, make_png, store_of

from assetcache import (
    AssetCache,
    AssetCacheError,
    AsyncAssetCache,
    AuthenticationError,
    RemoteError,
    RetryPolicy,
)
from assetcache._tasks import plan_send
from assetcache.emulator import FAULT_KINDS, Emulator

KEY = API_KEY.encode()
FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002, timeout=0.5)


def texts_of(err: BaseException) -> list[str]:
    """Everything an exception can show: str, repr, attributes, the formatted chain."""
    out = [str(err), repr(err), "".join(traceback.format_exception(err))]
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out += [str(e), repr(e), repr(vars(e)) if hasattr(e, "__dict__") else ""]
        e = e.__cause__ or e.__context__
    return out


def assert_no_key(texts: list[str], where: str) -> None:
    for text in texts:
        assert API_KEY not in text, f"the API key leaked into {where}: {text[:300]!r}"


def files_bytes(folder: Path) -> Iterator[tuple[Path, bytes]]:
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root, name)
            if path.is_file():
                yield path, path.read_bytes()


def echoing_server(request: httpx.Request) -> httpx.Response:
    """A hostile or buggy server that repeats the key it was sent in every answer."""
    echoed = request.headers["authorization"]
    tasks = json.loads(request.content)
    kind = tasks[0]["image"][-8:]
    if "A" <= kind[-1] <= "M":
        return httpx.Response(
            400,
            json={
                "errors": [
                    {
                        "code": "invalidImage",
                        "message": f"bad image from {echoed}",
                        "parameter": "image",
                        "taskUUID": tasks[0]["taskUUID"],
                        "taskType": "imageUpload",
                    }
                ]
            },
        )
    if "N" <= kind[-1] <= "Z":
        return httpx.Response(
            401, json={"errors": [{"code": "invalidApiKey", "message": f"{echoed} is not valid"}]}
        )
    if "a" <= kind[-1] <= "m":
        return httpx.Response(500, text=f"<html>upstream said: {echoed}</html>")
    return httpx.Response(
        200, json={"data": [{"taskUUID": tasks[0]["taskUUID"], "imageUUID": f"{echoed}"}]}
    )


def test_the_key_is_in_no_log_error_repr_or_database_byte(tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)  # the root: assetcache's loggers, httpx and httpcore
    texts: list[str] = []
    files = []
    for i in range(24):
        path = tmp_path / "in" / f"img-{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(make_png(500 + i))
        files.append(path)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    db_folder = tmp_path / "db" / "nested"
    db = db_folder / "cache.db"
    hostile = [
        tmp_path / "in" / "broken.png",
        tmp_path / "missing.png",
        "ftp://h/x.png",
        "data:image/png;base64,@@",
        b"not an image",
        "https://u:pw@cdn.example/a.png?t=1",
    ]

    with Emulator(
        api_key=API_KEY,
        fault_rate=0.3,
        fault_kinds=sorted(FAULT_KINDS),
        seed=11,
        retry_after=0,
        slow_seconds=1.0,
    ) as emu:
        with AssetCache(
            API_KEY,
            base_url=emu.base_url,
            db_path=db,
            clock=emu.clock,
            retry=RetryPolicy(timeout=0.5),
            sleep=lambda s: None,
            keep_copies=True,
        ) as cache:
            results = cache.resolve_many([*files, *hostile])
            assert sum(r.ok for r in results) >= len(files)
            emu.set_faults(rate=0.0)
            emu.fail_next(*["503"] * 8)
            results += cache.resolve_many([make_png(900)])  # gives up: ServerError
            emu.advance(days=31)
            results += cache.resolve_many(files[:4])  # re-uploads
            texts += [
                repr(cache),
                repr(cache.stats()),
                repr(list(cache.entries())),
                repr(list(cache.status([str(tmp_path / "in")]))),
                *cache.export_entries(),
                repr(cache.doctor()),
                repr(cache.verify()),
                repr(cache.forget([str(files[0])])),
            ]
            for res in results:
                texts += [repr(res), str(res)]
                if res.error is not None:
                    texts += texts_of(res.error)
            assert any(r.error is not None for r in results)
            # The request the plan would send, as a debugger or tracer would show it.
            prepared = engine_of(cache).prepare(make_png(902))
            plan = plan_send(engine_of(cache), [(prepared.key, prepared.payload())])
            effect = next(plan)
            assert API_KEY in effect.headers["Authorization"]  # it is there ...
            texts += [repr(effect), repr(cache._driver)]  # ... and shown nowhere
            plan.close()
        assert emu.fault_count > 0

    # A server that echoes the Authorization header back in every kind of answer.
    with AssetCache(
        API_KEY,
        base_url="https://api.example.test/v1",
        db_path=db,
        transport=httpx.MockTransport(echoing_server),
        retry=FAST,
        sleep=lambda s: None,
    ) as cache:
        payloads = [make_png(600 + i) for i in range(40)]
        for res in cache.resolve_many(payloads, concurrency=1):
            texts += [repr(res)] + (texts_of(res.error) if res.error else [])
        with pytest.raises(AssetCacheError) as info:
            for data in payloads:
                cache.resolve(data)
        texts += texts_of(info.value)

    # A server that does not accept this key; one that is not there at all.
    with Emulator(api_key="another-account-key") as other:
        with AssetCache(API_KEY, base_url=other.base_url, db_path=db, retry=FAST) as cache:
            with pytest.raises(AuthenticationError) as auth:
                cache.resolve(files[1])
            texts += texts_of(auth.value)
        closed_port = other.port
    with AssetCache(
        API_KEY,
        base_url=f"http://127.0.0.1:{closed_port}/v1",
        db_path=db,
        retry=FAST,
        sleep=lambda s: None,
    ) as cache:
        with pytest.raises(RemoteError) as gone:
            cache.resolve(make_png(901))
        texts += texts_of(gone.value)

    async def twin() -> list[str]:
        async with AsyncAssetCache(
            API_KEY,
            base_url="https://api.example.test/v1",
            db_path=db,
            transport=httpx.MockTransport(echoing_server),
            retry=FAST,
        ) as acache:
            out = [repr(acache)]
            for res in await acache.resolve_many([make_png(700 + i) for i in range(8)]):
                out += [repr(res)] + (texts_of(res.error) if res.error else [])
            return out

    texts += asyncio.run(twin())

    assert len(caplog.records) > 20  # DEBUG logging really ran
    assert any(r.name.startswith("httpx") or r.name.startswith("httpcore") for r in caplog.records)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    assert_no_key([formatter.format(r) for r in caplog.records], "a log record")
    assert_no_key([repr(r.args) for r in caplog.records], "a log record's arguments")
    assert_no_key(texts, "an error, repr or listing")
    captured = capsys.readouterr()
    assert_no_key([captured.out, captured.err], "printed output")
    stored = list(files_bytes(tmp_path / "db"))
    assert any(p.name == "cache.db" for p, _ in stored)
    for path, data in stored:
        assert KEY not in data, f"the API key is stored in {path}"
        assert base64.b64encode(KEY) not in data


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([script(), *args], capture_output=True, text=True, env=env, timeout=120)


def test_the_cli_at_debug_never_prints_the_key(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(20):
        (images / f"p{i:02d}.png").write_bytes(make_png(800 + i))
    (images / "bad.png").write_bytes(b"not a png at all")
    key_file = tmp_path / "key.txt"
    key_file.write_text(API_KEY + "\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ASSETCACHE_", "RUNWARE_"))}
    env = {**base, "RUNWARE_API_KEY": API_KEY}
    db = tmp_path / "state" / "deeper" / "cache.db"
    db.parent.mkdir(parents=True)  # an explicit --db needs its folder
    outputs: list[str] = []
    with Emulator(
        api_key=API_KEY,
        fault_rate=0.3,
        fault_kinds=["500", "503", "429", "drop", "nonjson", "bad_uuid"],
        seed=5,
    ) as emu:
        common = ["-vv", "--db", str(db), "--api-url", emu.base_url]
        emu.fail_next("503", "drop", "bad_uuid", "429")  # retries are logged with their reason
        runs = [
            run_cli(*common, "upload", str(images), env=env),
            run_cli(*common, "upload", "--json", str(images), env=env),
            run_cli(
                "-vv",
                "--db",
                str(db),
                "--api-url",
                emu.base_url,
                "--api-key-file",
                str(key_file),
                "upload",
                str(images / "p00.png"),
                env=base,
            ),
            run_cli(*common, "ls", "--json", env=env),
            run_cli(*common, "stats", "--json", env=env),
            run_cli(*common, "status", str(images), env=env),
            run_cli(*common, "doctor", env=env),
            run_cli(*common, "export", env=env),
        ]
    with Emulator(api_key="another-account-key") as other:
        runs.append(
            run_cli(
                "-vv",
                "--db",
                str(db),
                "--api-url",
                other.base_url,
                "upload",
                str(images / "p01.png"),
                env={**env, "RUNWARE_API_KEY": API_KEY},
            )
        )
        refused = runs[-1]
    assert refused.returncode != 0 and "API key" in refused.stdout + refused.stderr
    assert runs[0].returncode == 1  # bad.png failed, the rest went through
    assert "INFO httpx" in runs[0].stderr and "retrying" in runs[0].stderr  # httpx or httpx2
    for done in runs:
        outputs += [done.stdout, done.stderr]
        assert "Traceback" not in done.stderr, done.stderr
    assert_no_key(outputs, "CLI output")
    for path, data in files_bytes(tmp_path / "state"):
        assert KEY not in data, f"the API key is stored in {path}"


# -- file modes ---------------------------------------------------------------------


def test_the_database_is_0600_and_the_folders_it_creates_0700(tmp_path, emu, monkeypatch):
    monkeypatch.setattr(os, "umask", os.umask)  # restored after the test
    old = os.umask(0o022)  # the usual umask: without care, files 0644 and folders 0755
    try:
        db = tmp_path / "new" / "two" / "levels" / "cache.db"
        with AssetCache(API_KEY, base_url=emu.base_url, db_path=db, keep_copies=True) as cache:
            cache.resolve(make_png(1000))
            created = [db.parent, db.parent.parent, db.parent.parent.parent]
            for folder in created:
                assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
            for path in db.parent.iterdir():
                mode = stat.S_IMODE(path.stat().st_mode)
                if path.is_dir():
                    assert mode == 0o700, path
                else:
                    assert mode == 0o600, path
            assert {p.name for p in db.parent.iterdir()} >= {"cache.db", "cache.db-wal"}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSETCACHE_",))}
        # Only the default location is created (an explicit --db needs its folder).
        env["XDG_CACHE_HOME"] = str(tmp_path / "cli-made")
        cli_db = tmp_path / "cli-made" / "assetcache" / "cache.db"
        image = tmp_path / "x.png"
        image.write_bytes(make_png(1001))
        done = subprocess.run(
            [script(), "--emulator", "upload", str(image)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert stat.S_IMODE(cli_db.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(cli_db.stat().st_mode) == 0o600
    finally:
        os.umask(old)


# -- the emulator binds to loopback ---------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (Linux /proc/net/tcp*)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if int(hexport, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                raw = bytes.fromhex(addr)
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def test_the_emulator_listens_on_loopback_only_by_default():
    with Emulator() as emu:
        assert emu.host == "127.0.0.1"
        assert emu.base_url.startswith("http://127.0.0.1:")
        if Path("/proc/net/tcp").exists():
            assert listening_addresses(emu.port) == {"127.0.0.1"}

    proc = subprocess.Popen(
        [sys.executable, "-m", "assetcache.emulator"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        if Path("/proc/net/tcp").exists():
            assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        proc.terminate()
        proc.wait(10)

    from click.testing import CliRunner

    from assetcache._cli import cli

    help_text = CliRunner().invoke(cli, ["emulator", "--help"]).output
    assert "127.0.0.1" in help_text
    assert cli.commands["emulator"].params[0].default == "127.0.0.1"


# -- TLS ----------------------------------------------------------------------------


@pytest.fixture
def self_signed_server(tmp_path) -> Iterator[str]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate, which would
    accept every upload: only certificate verification can stop the client."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    accepted: list[Any] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            tasks = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            accepted.append(tasks)
            body = json.dumps(
                {
                    "data": [
                        {
                            "taskType": "imageUpload",
                            "taskUUID": t["taskUUID"],
                            "imageUUID": str(uuid.uuid4()),
                        }
                        for t in tasks
                    ]
                }
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        assert accepted == []  # no request body (with its key) ever reached the impostor


def test_tls_certificates_are_verified(self_signed_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    sleeps: list[float] = []
    with AssetCache(
        API_KEY,
        base_url=self_signed_server,
        db_path=tmp_path / "c.db",
        retry=FAST,
        sleep=sleeps.append,
    ) as cache:
        with pytest.raises(RemoteError) as info:
            cache.resolve(make_png(1100))
        assert "certificate" in str(info.value).lower()
        assert self_signed_server in str(info.value)
        assert sleeps == []  # not retried: an untrusted certificate stays untrusted
        assert store_of(cache).read("SELECT COUNT(*) FROM assets")[0][0] == 0
        client = cache._driver.sync_client
        assert client is not None
        context = client._transport._pool._ssl_context
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert_no_key([r.getMessage() for r in caplog.records], "a log record")

    async def twin() -> ssl.SSLContext:
        async with AsyncAssetCache(
            API_KEY, base_url=self_signed_server, db_path=tmp_path / "a.db", retry=FAST
        ) as acache:
            res = await acache.resolve_many([make_png(1101)])
            assert "certificate" in str(res[0].error).lower()
            return acache._driver.async_client._transport._pool._ssl_context

    context = asyncio.run(twin())
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_no_option_turns_verification_off():
    from click.testing import CliRunner

    from assetcache._cli import cli

    help_text = CliRunner().invoke(cli, ["--help"]).output.lower()
    for word in ("insecure", "no-verify", "verify=false", "skip-tls"):
        assert word not in help_text
    import inspect

    from assetcache._transport import client_kwargs

    source = inspect.getsource(client_kwargs)
    assert "verify" not in source  # httpx's default: verify=True


def test_a_plain_http_client_skips_the_ca_bundle_but_still_verifies(tmp_path, monkeypatch):
    # An http:// endpoint (the emulator, the local proxy) needs no CA bundle: its
    # client gets a context that trusts nothing, verification still required.
    # https:// and proxied URLs keep the library's default context.
    from assetcache._transport import plain_http_tls

    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with (
        Emulator(api_key=API_KEY) as emu,
        AssetCache(API_KEY, base_url=emu.base_url, db_path=tmp_path / "c.db") as cache,
    ):
        cache.resolve(make_png(1200))
        context = cache._driver.sync_client._transport._pool._ssl_context
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert context.get_ca_certs() == [] and context.cert_store_stats()["x509_ca"] == 0
    assert plain_http_tls("https://api.runware.ai/v1") is None
    assert plain_http_tls("HTTP://127.0.0.1:1/v1") is not None
    monkeypatch.setenv("HTTP_PROXY", "https://proxy.example:3128")
    assert plain_http_tls("http://127.0.0.1:1/v1") is None
