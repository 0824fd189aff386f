"""Pages as a person sees them: Debian's headless Chromium, after the page's scripts have run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Tall: pages that list things (Prefect's runs) render only the rows in view.
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--virtual-time-budget=15000",
    "--window-size=1400,2400",
]


def chromium() -> str:
    """The browser; without it the test is skipped on a developer's machine, and fails in CI, which
    installs it (.ci/run)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("Debian's chromium is not installed")
    return found


def rendered(url: str, screenshot: Path | None = None, showing: str | None = None) -> str:
    """The page's DOM once its scripts have rendered it; ``screenshot``: also a PNG of it there.

    ``showing``: text the page shows once its data has loaded. Chromium's virtual time can run out
    before the page's API calls answer on a loaded machine, so the page is loaded again (three times at
    most) until the text is there.
    """
    for _ in range(3):
        command = [chromium(), *BROWSER_FLAGS, "--dump-dom", url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        if showing is None or showing in done.stdout:
            break
    if screenshot is not None:
        shot = [chromium(), *BROWSER_FLAGS, f"--screenshot={screenshot}", url]
        subprocess.run(shot, capture_output=True, timeout=120, check=True)
    return done.stdout
