"""120 simulated days against the emulator: zero dead or wrong UUIDs.

Each simulated day is one run of a program: a fresh AssetCache whose clock is
the emulator's (the server's) plus a skew of up to +-3 days, drawn anew for
each run. A run serves UUIDs without using them (get_uuid, resolve_many),
uses them in consuming tasks (use(), or a task of its own followed by
touch()), and now and then Runware deletes an upload behind the cache's
back; the next use must then succeed with exactly one re-upload. After every
answer the emulator must hold the UUID handed out, for exactly those bytes.
"""

from __future__ import annotations

import hashlib
import random
import ssl
from pathlib import Path

import httpx
import pytest
from helpers import API_KEY, write_images

from assetcache import AssetCache, RetryPolicy
from assetcache.emulator import Emulator

DAY = 86400.0
DAYS = 120
SEEDS = range(20)
ASSETS = 5
#: Assets only ever served (never used in a task): their evidence runs out every 29 days.
SERVED_ONLY = (0, 1)
WINDOW = 29 * DAY  # retention minus the margin: the least time between two uploads
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.0005, max_delay=0.002, timeout=10.0)


#: One TLS context for every client of the test: building one costs ~0.2 s.
_TLS = ssl.create_default_context()
_APP = httpx.Client(verify=_TLS)


def consume(base_url: str, image_uuid: str) -> httpx.Response:
    """A consuming task (imageInference with seedImage), as an app sends it."""
    import uuid

    task = {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "seedImage": image_uuid,
        "positivePrompt": "a test",
        "model": "runware:100@1",
        "width": 512,
        "height": 512,
    }
    return _APP.post(base_url, json=[task], headers={"Authorization": f"Bearer {API_KEY}"})


def _held(emu: Emulator, uuid: str | None, digest: str) -> bool:
    image = emu.image(uuid) if uuid else None
    return image is not None and image.sha256 == digest


@pytest.mark.parametrize("seed", SEEDS)
def test_120_days_never_hand_out_a_dead_or_wrong_uuid(
    tmp_path: Path, seed: int, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(seed)
    paths = write_images(tmp_path / "img", *range(100 + seed * ASSETS, 100 + (seed + 1) * ASSETS))
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    # Per asset: server time of the last evidence of a use, and uploads the
    # cache made because the evidence ran out (a deletion's re-upload aside).
    evidence: list[float | None] = [None] * ASSETS
    plain_uploads = [0] * ASSETS
    deletion_uploads = [0] * ASSETS
    failures: list[str] = []

    with Emulator(api_key=API_KEY, frozen=True, start_time=1_800_000_000.0) as emu:

        def uploads(i: int) -> int:
            return emu.uploads_by_sha256()[digests[i]]

        def account(day: int, before: list[int], now: float) -> None:
            for j in range(ASSETS):
                made = uploads(j) - before[j]
                if made:
                    last = evidence[j]
                    if last is not None and now - last < WINDOW:
                        failures.append(
                            f"day {day}: asset {j} uploaded again "
                            f"{(now - last) / DAY:.1f} days after evidence of a use"
                        )
                    plain_uploads[j] += made
                    evidence[j] = now

        def used_one(chosen: list[int]) -> int:
            usable = [j for j in chosen if j not in SERVED_ONLY]
            return usable[0] if usable else rng.randrange(len(SERVED_ONLY), ASSETS)

        def check(day: int, what: str, i: int, uuid: str | None) -> None:
            if not _held(emu, uuid, digests[i]):
                failures.append(f"day {day}: {what} of asset {i} gave {uuid}, not held for it")

        for day in range(DAYS):
            skew = rng.choice([0.0, rng.uniform(-3, 3) * DAY])
            cache = AssetCache(
                API_KEY,
                base_url=emu.base_url,
                db_path=tmp_path / "cache.db",
                clock=lambda skew=skew: emu.clock() + skew,
                retry=FAST_RETRY,
                transport=httpx.HTTPTransport(verify=_TLS),
            )
            try:
                for _ in range(rng.randint(1, 4)):
                    action = rng.choices(
                        ["serve", "batch", "use", "touch", "delete"], [4, 2, 2, 1, 0.4]
                    )[0]
                    chosen = rng.sample(range(ASSETS), rng.randint(1, ASSETS))
                    before = [uploads(i) for i in range(ASSETS)]
                    now = emu.clock()
                    used: list[int] = []
                    if action == "serve":
                        for i in chosen:
                            check(day, "get_uuid", i, cache.get_uuid(paths[i]))
                    elif action == "batch":
                        results = cache.resolve_many([paths[i] for i in chosen])
                        for i, res in zip(chosen, results, strict=True):
                            check(day, "resolve_many", i, res.uuid)
                    elif action in ("use", "delete"):
                        i = used_one(chosen)
                        if action == "delete":
                            # Runware drops the upload behind the cache's back.
                            current = cache.get_uuid(paths[i])
                            check(day, "get_uuid", i, current)
                            account(day, before, now)
                            emu.delete(current)
                            before = [uploads(j) for j in range(ASSETS)]
                        seen: list[str] = []

                        def task(uuid: str, seen: list[str] = seen) -> httpx.Response:
                            seen.append(uuid)
                            return consume(emu.base_url, uuid)

                        answer = cache.use(paths[i], task).json()
                        if "errors" in answer:
                            failures.append(f"day {day}: use() of asset {i} failed: {answer}")
                        check(day, "use", i, seen[-1])
                        if action == "delete":
                            if uploads(i) - before[i] != 1:
                                failures.append(
                                    f"day {day}: use() after a deletion made "
                                    f"{uploads(i) - before[i]} uploads, not one"
                                )
                            deletion_uploads[i] += 1
                            before[i] += 1
                        used.append(i)
                    else:  # touch: a task of the caller's own, then touch()
                        i = used_one(chosen)
                        uuid = cache.get_uuid(paths[i])
                        check(day, "get_uuid", i, uuid)
                        if "errors" not in consume(emu.base_url, uuid).json():
                            cache.touch(uuid)
                            used.append(i)
                    account(day, before, now)
                    for i in used:
                        evidence[i] = now
            finally:
                cache.close()
            emu.advance(days=rng.uniform(0.6, 1.4))

        per_asset = [uploads(i) for i in range(ASSETS)]
    with capsys.disabled():
        print(
            f"\nseed {seed}: uploads per asset {per_asset} "
            f"(after deletions {deletion_uploads}) over {DAYS} days"
        )
    assert not failures, "\n".join(failures[:20])
    for i in range(ASSETS):
        # No more than one upload per 29 days of no evidenced use.
        assert plain_uploads[i] <= 1 + DAYS * DAY // WINDOW, (i, plain_uploads[i])
