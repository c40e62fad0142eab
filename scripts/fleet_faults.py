"""The fleet fault cases of tests/test_fleet_faults.py, in loops.

    ASSETCACHE_TEST_POSTGRES=postgresql://postgres@127.0.0.1:5432/test \\
        python scripts/fleet_faults.py [--runs 10] [--cases cut3,cut8,terminate-claim,...]

Each run: 4 simulated hosts x 4 worker processes resolve the same 500 images
through a fault proxy while the fault strikes (a 3 s or 8 s cut, or
pg_terminate_backend on claims or on records). A run passes with 0 contents
uploaded twice, 0 items failed, every served UUID held by the emulator for
those bytes, and every worker progressing within 5 s of the server's return.
Prints one JSON line per run and a COUNT line per case; exits 1 on any miss.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--cases", default="cut3,cut8,terminate-claim,terminate-record")
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    pg = os.environ.get("ASSETCACHE_TEST_POSTGRES")
    if not pg:
        print("set ASSETCACHE_TEST_POSTGRES=postgresql://user@127.0.0.1:5432/test", file=sys.stderr)
        return 2

    from helpers import API_KEY
    from pgproxy import FaultProxy
    from test_fleet_faults import Schema, run_fault

    from assetcache.emulator import Emulator

    parts = urlsplit(pg)
    failures = 0
    for case in args.cases.split(","):
        passed = 0
        for run in range(args.runs):
            schema = Schema()
            schema.sql(f"CREATE SCHEMA {schema.name}")
            t0 = time.perf_counter()
            try:
                with (
                    Emulator(api_key=API_KEY) as emu,
                    FaultProxy((parts.hostname or "127.0.0.1", parts.port or 5432)) as proxy,
                    tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp,
                ):
                    report = run_fault(emu, schema, proxy, Path(tmp), case, images=args.images)
                report["ok"] = True
                passed += 1
            except AssertionError as exc:
                report = {"fault": case, "ok": False, "why": str(exc)[:500]}
                failures += 1
            except Exception:
                report = {"fault": case, "ok": False, "why": traceback.format_exc()[-800:]}
                failures += 1
            finally:
                with contextlib.suppress(Exception):
                    schema.terminate()
                    schema.sql(f"DROP SCHEMA {schema.name} CASCADE")
            report["run"] = run + 1
            report["seconds"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(report), flush=True)
        print(f"COUNT {case} passed {passed} of {args.runs} runs", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
