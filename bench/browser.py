"""Headless Chromium driven by selenium, for the console's browser tests and its screenshots and
load timing (``bench.console``): Debian's ``chromium`` and ``chromium-driver`` (``apt-get install
chromium chromium-driver``), never a downloaded browser or driver, with Chromium's own background
traffic (updates, sync, field trials) off, since this machine reaches no other host."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
    "--disable-extensions", "--metrics-recording-only", "--no-default-browser-check", "--hide-scrollbars",
)


def find(candidates: tuple[str, ...]) -> str | None:
    return next((path for path in candidates if Path(path).exists()), None)


def missing() -> str | None:
    """Why the browser cannot start here (a line naming what to install), or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if find(CHROMIUM) is None or find(CHROMEDRIVER) is None:
        return "Chromium and its driver are not installed (apt-get install chromium chromium-driver)"
    return None


@contextmanager
def chromium(width: int = 1280, height: int = 800, scale: float = 1.0):
    """A headless Chromium whose page viewport is ``width`` x ``height`` CSS pixels (``scale``: device
    pixels per CSS pixel, as on a phone's screen); its console messages are kept for
    ``driver.get_log("browser")``. Quits, and removes its profile, on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = find(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="diglm-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_AVOID_STATS", "true")  # selenium's own usage report: no traffic
    driver = webdriver.Chrome(options=options, service=Service(executable_path=find(CHROMEDRIVER)))
    try:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": width < 600})
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
