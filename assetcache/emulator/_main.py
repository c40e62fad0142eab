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
from typing import NoReturn

from ._emulator import Emulator
from ._faults import FAULT_KINDS, TRANSIENT_FAULTS
from ._state import StateError
from ._ws import AVAILABLE as WS_AVAILABLE


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line (no usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (--help lists the options)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m assetcache.emulator",
        description="Serve a local emulator of Runware's REST and WebSocket API.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port, 0-65535 (default 0: a free one)"
    )
    parser.add_argument("--path", default="/v1", help="API path (default /v1)")
    parser.add_argument(
        "--api-key-env",
        default="RUNWARE_API_KEY",
        metavar="VAR",
        help="accept only the key in this environment variable; if it is unset, "
        "accept any non-empty key (default RUNWARE_API_KEY)",
    )
    parser.add_argument("--state", metavar="FILE", help="persist images and clock here")
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds each answer waits (a round trip), after its request is processed",
    )
    parser.add_argument(
        "--media-placeholder",
        type=int,
        default=0,
        metavar="N",
        help='answer mediaStorage uploads with mediaUUID "1" (still processing) for N '
        "answers, getResponse giving the result after (default 0: at once)",
    )
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
    """Parse arguments, print the URLs and serve until signalled.

    Every problem (a bad option, a busy port, a state file that cannot be
    used) is one line on stderr and exit status 2, never a traceback.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    problem = option_problem(
        port=args.port,
        latency=args.latency,
        fault_rate=args.fault_rate,
        uplink_mbps=args.uplink_mbps,
        media_placeholder=args.media_placeholder,
        retention_days=args.retention_days,
        retry_after=args.retry_after,
        max_side=args.max_side,
    )
    if problem:
        parser.error(problem)
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
            media_placeholder=args.media_placeholder,
        )
    except StateError as exc:
        return _fail(parser, str(exc))
    except (ValueError, OverflowError) as exc:
        parser.error(str(exc))
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
    try:
        emulator.start()
    except OSError as exc:
        return _fail(parser, bind_error(args.host, args.port, exc))
    for line in url_lines(emulator):
        print(line, flush=True)
    try:
        emulator.serve_forever()
    except StateError as exc:
        return _fail(parser, str(exc))
    return 0


def option_problem(**values: float | int | None) -> str | None:
    """The first option out of range, as ``--name VALUE: reason``, or None.

    Shared by ``python -m assetcache.emulator`` and ``assetcache emulator`` so
    both name the option the same way.
    """
    rules: dict[str, tuple[float, float | None, str]] = {
        "port": (0, 65535, "is not within 0-65535"),
        "latency": (0, None, "must be >= 0 seconds"),
        "fault_rate": (0, 1, "must be within [0, 1]"),
        "uplink_mbps": (0, None, "must be >= 0"),
        "media_placeholder": (0, None, "must be >= 0"),
        "retention_days": (0, None, "must be > 0 days"),
        "retry_after": (0, None, "must be >= 0"),
        "max_side": (0, None, "must be >= 0 (0 keeps images as received)"),
    }
    for name, value in values.items():
        if value is None or name not in rules:
            continue
        low, high, reason = rules[name]
        bad = value != value or value < low or (high is not None and value > high)
        if name == "retention_days" and value <= 0:
            bad = True
        if bad:
            return f"--{name.replace('_', '-')} {value:g}: {reason}"
    return None


def url_lines(emulator: Emulator) -> list[str]:
    """What a started emulator prints: where REST, WebSocket and control answer."""
    lines = [f"listening on {emulator.base_url}"]
    lines.append(
        f"websocket    {emulator.ws_url}"
        if WS_AVAILABLE
        else "websocket    unavailable: pip install 'assetcache[websocket]'"
    )
    lines.append(f"control      {emulator.control_url}/status")
    return lines


def bind_error(host: str, port: int, exc: OSError) -> str:
    """One line for a failed bind, e.g. a port already in use."""
    reason = exc.strerror or str(exc)
    return f"cannot listen on {host}:{port}: {reason.lower()}"


def _fail(parser: argparse.ArgumentParser, message: str) -> int:
    print(f"{parser.prog}: {message}", file=sys.stderr, flush=True)
    return 2
