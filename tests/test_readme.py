"""The README's output blocks are the real output of the commands they show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "readme.py"


def check(readme: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--readme", str(readme), *extra],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_readme_output_blocks_match_the_real_output():
    done = check(ROOT / "README.md")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "match the real output" in done.stdout


SUMMARY = (
    "2 file(s): 2 uploaded, 0 re-uploaded, 0 from cache, 0 failed; "
    "9.9 KiB sent (request bytes, base64), 0 B saved (file bytes)"
)
SMALL = """\
# t

<!-- readme: session t; images photos cat-{{}}.png 2 -->
```
$ assetcache upload photos
{first}
photos/cat-2.png	11111111-2222-4333-8444-555555555555	uploaded
{summary}
$ assetcache forget no-such-thing
...
[exit 1]
```
"""


def test_a_changed_line_fails_and_uuids_sizes_do_not(tmp_path):
    readme = tmp_path / "README.md"
    # UUIDs and sizes differ from any real run: still a match.
    good = "photos/cat-1.png\t0e0e0e0e-1111-4222-8333-444444444444\tuploaded"
    readme.write_text(SMALL.format(first=good, summary=SUMMARY))
    done = check(readme)
    assert done.returncode == 0, done.stderr
    # One word changed: a failure, with a diff naming the command.
    readme.write_text(SMALL.format(first=good.replace("uploaded", "hit"), summary=SUMMARY))
    done = check(readme)
    assert done.returncode == 1
    assert "$ assetcache upload photos" in done.stderr
    assert "+photos/cat-1.png" in done.stderr


def test_write_rewrites_the_block_with_real_output(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(SMALL.format(first="stale line", summary=SUMMARY))
    subprocess.run(
        [sys.executable, str(SCRIPT), "--write", "--readme", str(readme)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    text = readme.read_text()
    assert "stale line" not in text
    assert "photos/cat-1.png\t" in text and "\tuploaded" in text
    assert check(readme).returncode == 0
