"""Every command that reads a file uses upload's guards: no FIFO, device or
other special file is opened for reading, and nothing above ``max_bytes`` is
read (``forget``, ``verify``, ``touch``, ``invalidate``, ``status``)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_support import EmulatorCLI
from helpers import make_png

from assetcache import SourceError

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX special files")

HANG_BOUND = 60.0
HUGE = 10 << 30  # a sparse 10 GiB file: reading it to the end is the bug


def bounded(fn: Callable[[], Any]) -> Any:
    box: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_BOUND)
    assert not thread.is_alive(), "the call did not end: it blocks on a special file"
    if errors:
        raise errors[0]
    return box[0]


def specials(folder: Path) -> dict[str, Path]:
    fifo = folder / "fifo.png"
    os.mkfifo(fifo)
    sparse = folder / "sparse.png"
    with open(sparse, "wb") as f:
        f.truncate(HUGE)
    zero = folder / "zero.png"
    zero.symlink_to("/dev/zero")
    return {"fifo": fifo, "sparse": sparse, "device": zero}


@pytest.mark.parametrize("kind", ["fifo", "sparse", "device"])
def test_forget_uses_upload_guards(tmp_path: Path, kind: str) -> None:
    ecli = EmulatorCLI(tmp_path)
    target = specials(tmp_path)[kind]
    result = bounded(lambda: ecli("forget", target))
    assert result.exit_code == 1
    reason = "limit" if kind == "sparse" else "not a regular file"
    assert reason in result.stderr, result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("kind", ["fifo", "sparse", "device"])
def test_verify_uses_upload_guards(tmp_path: Path, kind: str) -> None:
    ecli = EmulatorCLI(tmp_path)
    tracked = tmp_path / "tracked.png"
    tracked.write_bytes(make_png(1))
    assert ecli("upload", tracked).exit_code == 0
    tracked.unlink()
    special = specials(tmp_path)[kind]
    os.rename(special, tracked)  # the tracked path now holds a special file
    result = bounded(lambda: ecli("verify"))
    reason = "limit" if kind == "sparse" else "not a regular file"
    assert reason in result.stdout, result.stdout
    assert "Traceback" not in result.output


@pytest.mark.parametrize("kind", ["fifo", "sparse", "device"])
@pytest.mark.parametrize("method", ["touch", "invalidate"])
def test_touch_and_invalidate_use_upload_guards(
    make_cache: Callable[..., Any], tmp_path: Path, kind: str, method: str
) -> None:
    target = specials(tmp_path)[kind]
    cache = make_cache()
    with pytest.raises(SourceError) as info:
        bounded(lambda: getattr(cache, method)(str(target)))
    assert ("limit" if kind == "sparse" else "not a regular file") in str(info.value)


def test_status_never_opens_a_fifo(tmp_path: Path) -> None:
    ecli = EmulatorCLI(tmp_path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(make_png(2))
    assert ecli("upload", folder).exit_code == 0
    specials(folder)
    result = bounded(lambda: ecli("status", "-a", folder))
    assert result.exit_code in (0, 1)
    assert "Traceback" not in result.output
