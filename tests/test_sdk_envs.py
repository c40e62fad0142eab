"""Each official Runware SDK, unchanged, in its own environment against the emulator.

Both SDKs install a top-level package named ``runware``, so they cannot share
this environment: ``.ci/sdk-envs`` builds ``.venv-sdk/runware`` (runware
0.5.24, WebSocket only) and ``.venv-sdk/runware-sdk`` (runware-sdk 1.8.0),
and this test runs the scenarios in ``tests/sdk/<name>/`` inside each.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: (environment under .venv-sdk/, scenario folder under tests/sdk/)
ENVS = [("runware", "runware"), ("runware-sdk", "runware_sdk")]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("env", "scenarios"), ENVS, ids=[env for env, _ in ENVS])
def test_sdk_scenarios_pass_in_their_own_environment(env: str, scenarios: str) -> None:
    python = ROOT / ".venv-sdk" / env / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no {python.parent.parent}: run .ci/sdk-envs to build the SDK environments")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    environ.pop("RUNWARE_API_KEY", None)  # the scenarios choose their own key
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"tests/sdk/{scenarios}"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, (
        f"SDK scenarios failed in .venv-sdk/{env} (exit {result.returncode}):\n"
        f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    )
