"""A database you can trust; leases that hold as long as the work; scoped by account.

Tests run as root: another user's file is made with ``chown`` to another uid.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import invoke
from helpers import API_KEY, write_images

from assetcache import AssetCache, ConfigurationError
from assetcache.emulator import Emulator

OTHER_UID = 4242

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another uid needs root"
)


def _make_db(emu: Emulator, path: Path) -> None:
    AssetCache(API_KEY, base_url=emu.base_url, db_path=path).close()


@needs_root
def test_db_file_owned_by_another_user_is_refused(emu: Emulator, tmp_path: Path) -> None:
    db = tmp_path / "cache.db"
    _make_db(emu, db)
    os.chown(db, OTHER_UID, -1)
    with pytest.raises(ConfigurationError) as info:
        AssetCache(API_KEY, base_url=emu.base_url, db_path=db)
    assert str(db) in str(info.value) and "owned by" in str(info.value)


@needs_root
def test_db_folder_owned_by_another_user_is_refused(emu: Emulator, tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o700)
    os.chown(folder, OTHER_UID, -1)
    with pytest.raises(ConfigurationError) as info:
        AssetCache(API_KEY, base_url=emu.base_url, db_path=folder / "cache.db")
    assert str(folder) in str(info.value)
    assert not (folder / "cache.db").exists()


@pytest.mark.parametrize("mode", [0o660, 0o606, 0o666, 0o622])
def test_db_file_writable_by_others_is_refused(emu: Emulator, tmp_path: Path, mode: int) -> None:
    db = tmp_path / "cache.db"
    _make_db(emu, db)
    os.chmod(db, mode)
    with pytest.raises(ConfigurationError) as info:
        AssetCache(API_KEY, base_url=emu.base_url, db_path=db)
    assert "writable" in str(info.value)


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o757])
def test_db_folder_writable_by_others_is_refused(emu: Emulator, tmp_path: Path, mode: int) -> None:
    folder = tmp_path / "open"
    folder.mkdir()
    os.chmod(folder, mode)
    with pytest.raises(ConfigurationError):
        AssetCache(API_KEY, base_url=emu.base_url, db_path=folder / "cache.db")


def test_sidecar_file_of_another_user_is_refused(emu: Emulator, tmp_path: Path) -> None:
    db = tmp_path / "cache.db"
    _make_db(emu, db)
    wal = tmp_path / "cache.db-wal"
    wal.write_bytes(b"")
    os.chmod(wal, 0o666)
    with pytest.raises(ConfigurationError):
        AssetCache(API_KEY, base_url=emu.base_url, db_path=db)


@needs_root
def test_deliberate_sharing_is_accepted(
    emu: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "cache.db"
    _make_db(emu, db)
    os.chmod(db, 0o664)
    os.chown(db, OTHER_UID, -1)
    AssetCache(API_KEY, base_url=emu.base_url, db_path=db, shared_db=True).close()
    monkeypatch.setenv("ASSETCACHE_SHARED_DB", "1")
    AssetCache(API_KEY, base_url=emu.base_url, db_path=db).close()


def test_dangling_symlink_is_not_followed(emu: Emulator, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "planted.db"
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    link = tmp_path / "cache.db"
    link.symlink_to(target)
    with pytest.raises(ConfigurationError) as info:
        AssetCache(API_KEY, base_url=emu.base_url, db_path=link)
    assert "symlink" in str(info.value) or "symbolic link" in str(info.value)
    assert not target.exists()


def test_symlink_to_an_existing_private_db_works(emu: Emulator, tmp_path: Path) -> None:
    real = tmp_path / "real.db"
    _make_db(emu, real)
    link = tmp_path / "cache.db"
    link.symlink_to(real)
    AssetCache(API_KEY, base_url=emu.base_url, db_path=link).close()


def test_cli_refuses_with_one_message_and_exit_2(tmp_path: Path) -> None:
    db = tmp_path / "cache.db"
    invoke("--emulator", "--db", db, "stats")
    os.chmod(db, 0o666)
    result = invoke("--emulator", "--db", db, "stats")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(db) in lines[0] and "Traceback" not in result.output
    assert invoke("--emulator", "--db", db, "--shared-db", "stats").exit_code == 0
    assert (
        invoke("--emulator", "--db", db, "stats", env={"ASSETCACHE_SHARED_DB": "1"}).exit_code == 0
    )


def test_default_location_folders_are_checked(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cache_home = home / ".cache"
    cache_home.mkdir(parents=True)
    os.chmod(cache_home, 0o777)
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(cache_home)}
    result = invoke("--emulator", "stats", env=env)
    assert result.exit_code == 2
    assert str(cache_home) in result.output
    os.chmod(cache_home, 0o700)
    assert invoke("--emulator", "stats", env=env).exit_code == 0


# -- leases ------------------------------------------------------------------------------


def test_lease_of_a_predecessor_with_this_pid_is_dead_at_once(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    (path,) = write_images(tmp_path / "img", 1)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) > 50:
            raise AssertionError("waited on a dead predecessor's lease")

    cache = make_cache(sleep=sleep)
    cache.preview([path])  # creates the schema
    digest = next(iter(cache.preview([path]))).content_hash
    db = sqlite3.connect(tmp_path / "cache.db")
    host = os.uname().nodename
    db.execute(
        "INSERT INTO leases VALUES (?, ?, ?, ?, ?)",
        (cache.namespace, digest, "", f"{host}:{os.getpid()}:deadbeef", emu.clock() + 3600),
    )
    db.commit()
    db.close()
    res = cache.resolve(path)
    assert res.outcome == "uploaded" and emu.holds(res.uuid)
    assert sum(sleeps) < 1


def test_two_caches_in_one_process_do_not_take_each_others_lease(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    emu.set_latency(0.4)
    (path,) = write_images(tmp_path / "img", 2)
    a, b = make_cache(), make_cache()
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda c=c: results.append(c.get_uuid(path))) for c in (a, b)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(set(results)) == 1 and emu.upload_count == 1


def test_lease_is_renewed_while_an_upload_is_in_flight(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    """An upload that takes four TTLs is still done once: its owner keeps the lease."""
    emu.set_latency(2.0)
    (path,) = write_images(tmp_path / "img", 3)
    a, b = make_cache(lease_ttl=0.5), make_cache(lease_ttl=0.5)
    results: list[str] = []
    first = threading.Thread(target=lambda: results.append(a.get_uuid(path)))
    first.start()
    import time

    deadline = time.monotonic() + 5
    while emu.request_count == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(1.0)  # two TTLs into the upload: a lease never renewed has run out
    results.append(b.get_uuid(path))
    first.join(30)
    assert len(set(results)) == 1 and emu.upload_count == 1


def test_lease_ttl_is_a_setting(make_cache: Callable[..., AssetCache]) -> None:
    assert make_cache(lease_ttl=42.0).settings()["lease_ttl_seconds"] == 42.0
    with pytest.raises(ConfigurationError):
        make_cache(lease_ttl=0)


# -- scoped by account -------------------------------------------------------------------


@pytest.fixture
def two_accounts(tmp_path: Path):  # type: ignore[no-untyped-def]
    with Emulator(api_key={"key-a", "key-b"}) as emu:
        caches = [
            AssetCache(key, base_url=emu.base_url, db_path=tmp_path / "shared.db", clock=emu.clock)
            for key in ("key-a", "key-b")
        ]
        yield emu, caches[0], caches[1]
        for c in caches:
            c.close()


def test_another_account_cannot_invalidate_or_touch_by_uuid(two_accounts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    emu, a, b = two_accounts
    (path,) = write_images(tmp_path / "img", 4)
    uuid = a.get_uuid(path)
    before = next(a.entries()).last_used_at
    emu.advance(days=2)
    assert b.touch(uuid) is None
    assert next(a.entries()).last_used_at == before
    assert b.invalidate(uuid) is None
    assert a.resolve(path).outcome == "hit"
    with pytest.raises(Exception) as info:
        b.use(uuid, lambda u: u)
    assert uuid in str(info.value) or "no cache entry" in str(info.value)
    assert a.resolve(path).outcome == "hit"
