"""The console's screenshots and first-load time: starts the service on a model, sends it digits and
inputs unlike digits (so that the page has rates and rejections to show), then in headless Chromium
(``bench.browser``) times the console's first load with the cache off and, at 1280x800 and 390x844,
draws a digit on the pad, sends it, selects the newest rejection and takes screenshots.

    .venv/bin/python -m bench.console --model-dir artifacts/digits --write   (make console-screenshots)

``--write`` saves the PNGs under docs/console/ and updates the timing table in docs/console.md.
"""
from __future__ import annotations

import argparse
import base64
import statistics
import sys
import time

import httpx
import numpy as np

from bench import browser
from bench.serve_load import ROOT, free_port, start_server
from training.config import DataConfig
from training.data import load_dataset
from training.docs import update_section

SIZES = ((1280, 800), (390, 844))
TIMEOUT_S = 20.0
# A "7", as pointer moves from the top left of the pad: offsets as shares of the pad's side.
SEVEN = [(0.12, 0)] * 5 + [(-0.06, 0.12)] * 5
SEVEN_START = (-0.3, -0.3)  # from the pad's centre


def wait(driver, condition, what: str, timeout: float = TIMEOUT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, f"waited {timeout:g} s for {what}")


def draw(driver, moves=SEVEN, start=SEVEN_START) -> None:
    """Draw one stroke on the console's pad with pointer actions (press, moves, release)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    pad = driver.find_element(By.ID, "pad")
    size = pad.size["width"]
    actions = ActionChains(driver).move_to_element_with_offset(pad, int(start[0] * size), int(start[1] * size)).click_and_hold()
    for dx, dy in moves:
        actions = actions.move_by_offset(int(dx * size), int(dy * size))
    actions.release().perform()


def traffic(base: str, model: str) -> None:
    """The last 40 of scikit-learn's digits one at a time, then inputs unlike digits: blank, noise,
    all ink, inverted and shifted digits (a model of 8x8 digits, as the default)."""
    shape = httpx.get(f"{base}/v2/models/{model}", timeout=30).json()["inputs"][0]["shape"][1:]
    if shape != [8, 8]:
        raise SystemExit(f"bench.console sends 8x8 digits; the model {model!r} takes inputs of shape {shape}")
    digits = load_dataset(DataConfig(name="digits")).x[-40:]
    generator = np.random.default_rng(0)
    unlike = [np.zeros((8, 8)), generator.integers(0, 17, (8, 8)), 16 - digits[0], np.roll(digits[1], 4, axis=1), np.full((8, 8), 16.0), 16 - digits[2]]
    for x in [*digits, *unlike]:
        body = {"inputs": [{"name": "input", "shape": [1, 8, 8], "datatype": "FP32", "data": np.asarray(x, dtype=float).ravel().tolist()}]}
        httpx.post(f"{base}/v2/models/{model}/infer", json=body, timeout=30).raise_for_status()


def first_loads(base: str, count: int) -> list[float]:
    """Milliseconds from navigation to the console's first drawn poll (its ``console-ready`` mark), cache off."""
    from selenium.webdriver.common.by import By

    times = []
    with browser.chromium(1280, 800) as driver:
        driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
        for _ in range(count):
            driver.get(f"{base}/console")
            wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#models tbody tr"), "the models table")
            times.append(driver.execute_script("return performance.getEntriesByName('console-ready')[0].startTime"))
    return times


def screenshots(base: str, width: int, height: int) -> dict[str, bytes]:
    """The console after drawing and sending a digit and selecting the newest rejection: the
    viewport, and the whole page."""
    from selenium.webdriver.common.by import By

    with browser.chromium(width, height) as driver:
        driver.get(f"{base}/console")
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#rejections button"), "the rejections")
        time.sleep(2.5)  # a second poll: the rates need two
        draw(driver)
        driver.find_element(By.ID, "send").click()
        wait(driver, lambda d: d.find_elements(By.ID, "decision"), "the answer")
        driver.find_element(By.CSS_SELECTOR, "#rejections button").click()
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#rejection-detail svg.histogram"), "the rejection's evidence")
        driver.execute_script("window.scrollTo(0, 0)")
        viewport = driver.get_screenshot_as_png()
        full_height = driver.execute_script("return document.documentElement.scrollHeight")
        page = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": width, "height": full_height, "scale": 1}}
        )
    return {f"console-{width}x{height}.png": viewport, f"console-{width}x{height}-full.png": base64.b64decode(page["data"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="artifacts/digits")
    parser.add_argument("--loads", type=int, default=10, help="first loads timed")
    parser.add_argument("--write", action="store_true", help="save the screenshots under docs/console/ and update docs/console.md")
    args = parser.parse_args()
    if (why := browser.missing()) is not None:
        print(f"the console's screenshots need a browser: {why}", file=sys.stderr)
        return 1
    port = free_port()
    server = start_server(port, "--model-dir", args.model_dir)
    base = f"http://127.0.0.1:{port}"
    try:
        model = httpx.get(f"{base}/v2").json()["models"][0]
        traffic(base, model)
        loads = first_loads(base, args.loads)
        images = {name: png for width, height in SIZES for name, png in screenshots(base, width, height).items()}
    finally:
        server.terminate()
        server.wait(timeout=60)
        server.log_path.unlink()
    median, slowest = statistics.median(loads), max(loads)
    table = ("| first loads | median (ms) | slowest (ms) | target |\n|---|---|---|---|\n"
             f"| {len(loads)} | {median:.0f} | {slowest:.0f} | under 1,000 ms: {'met' if slowest < 1000 else 'NOT met'} |")
    print(table)
    if args.write:
        folder = ROOT / "docs" / "console"
        folder.mkdir(exist_ok=True)
        for name, png in images.items():
            (folder / name).write_bytes(png)
        command = "python -m bench.console " + " ".join(sys.argv[1:])
        update_section(
            ROOT / "docs" / "console.md", "console-load",
            f"Command: `{command}` (bench/console.py). Time from navigation to the first poll drawn on the page (the "
            f"`console-ready` performance mark), Chromium's cache off, model `{model}` from `{args.model_dir}`:\n\n{table}",
            title="# The console\n",
        )
        print(f"wrote {len(images)} screenshots to {folder.relative_to(ROOT)}/ and the table to docs/console.md")
    return 0 if slowest < 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
