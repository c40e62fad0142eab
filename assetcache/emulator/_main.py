"""Command-line entry point, also callable from another CLI as ``main(argv)``.

>>> main(["--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import timedelta

from ._emulator import Emulator
from ._faults import FAULT_KINDS, TRANSIENT_FAULTS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m assetcache.emulator",
        description="Serve a local emulator of Runware's REST upload API.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    parser.add_argument("--path", default="/v1", help="API path (default /v1)")
    parser.add_argument(
        "--api-key-env",
        default="RUNWARE_API_KEY",
        metavar="VAR",
        help="accept only the key in this environment variable; if it is unset, "
        "accept any non-empty key (default RUNWARE_API_KEY)",
    )
    parser.add_argument("--state", metavar="FILE", help="persist images and clock here")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="probability in [0, 1]")
    parser.add_argument(
        "--uplink-mbps",
        type=float,
        default=0.0,
        metavar="MBPS",
        help="read request bodies no faster than this, shared by all connections, "
        "like a client's uplink (default 0: unlimited)",
    )
    parser.add_argument(
        "--fault-kinds",
        default=",".join(TRANSIENT_FAULTS),
        help=f"comma-separated, from: {', '.join(sorted(FAULT_KINDS))}",
    )
    parser.add_argument("--seed", type=int, help="seed for random faults")
    parser.add_argument("--retry-after", type=int, default=0, help="Retry-After on 429")
    parser.add_argument("--retention-days", type=float, default=30.0)
    parser.add_argument("--response-shape", choices=("list", "object"), default="list")
    parser.add_argument(
        "--keep-bytes",
        action="store_true",
        help="keep uploaded bytes in memory (off by default: a long run would grow)",
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=2048,
        metavar="PX",
        help="keep images at most this many px on the longer side, as Runware does "
        "(default 2048; 0 keeps them as received; needs Pillow)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, print ``listening on <base_url>`` and serve until signalled."""
    args = _parser().parse_args(argv)
    # An unset or empty variable means "accept any non-empty key".
    api_key = (os.environ.get(args.api_key_env) if args.api_key_env else None) or None
    kinds = [k.strip() for k in args.fault_kinds.split(",") if k.strip()]
    try:
        emulator = Emulator(
            api_key=api_key,
            host=args.host,
            port=args.port,
            path=args.path,
            retention=timedelta(days=args.retention_days),
            response_shape=args.response_shape,
            latency=args.latency,
            uplink_mbps=args.uplink_mbps,
            fault_rate=args.fault_rate,
            fault_kinds=kinds,
            seed=args.seed,
            retry_after=args.retry_after,
            state_path=args.state,
            keep_bytes=args.keep_bytes,
            max_side=args.max_side,
        )
    except ValueError as exc:
        _parser().error(str(exc))
    if threading.current_thread() is threading.main_thread():
        # SIGTERM behaves like Ctrl-C so serve_forever() returns and stops cleanly
        # (signal handlers can only be installed from the main thread).
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.max_side and not emulator.downscales:
        print(
            "note: Pillow is not installed: images are kept as received, not downscaled "
            f"to {args.max_side} px",
            file=sys.stderr,
            flush=True,
        )
    emulator.start()
    print(f"listening on {emulator.base_url}", flush=True)
    emulator.serve_forever()
    return 0
