"""The console (``GET /console``) in a real browser: headless Chromium driven by selenium
(``bench.browser``) against the live service in a thread. Without Chromium, its driver or selenium
these tests are skipped, unless ``CI_REQUIRE_BROWSER=1`` (``.ci/run`` sets it after installing
them), which makes a missing browser a failure."""
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from bench import browser
from bench.console import draw
from bench.console import wait as until
from service.app import create_app
from service.settings import ServiceSettings
from tests.agreement import held_out_digits
from tests.conftest import READY_TIMEOUT_S, free_port, served_in_thread
from training.cli import main as training_main

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
KEY = "console-test-key"

if (why := browser.missing()) is not None:
    if os.environ.get("CI_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"CI_REQUIRE_BROWSER=1 but {why}")
    pytest.skip(why, allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402  (needs selenium: skipped above without it)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("console") / "tiny"
    assert training_main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet", "--set", "train.epochs=2"]) == 0
    return out


@contextmanager
def serve(checkpoint: Path, **settings) -> Iterator[str]:
    """The service on a free local port in a thread: its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = create_app(ServiceSettings(model_dir=checkpoint, device="cpu", port=port, log_level="warning", **settings))
    with served_in_thread(app, port, lambda: httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200):
        yield url


@pytest.fixture(scope="module")
def service(checkpoint):
    with serve(checkpoint) as url:
        yield url


@pytest.fixture(scope="module")
def page(service):
    """The console loaded in Chromium (1280x800), once its first poll has drawn the models table."""
    with browser.chromium(1280, 800) as driver:
        driver.get(f"{service}/console")
        until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#models tbody tr"), "the models table")
        yield driver


def errors_of(driver) -> list[str]:
    """JavaScript errors: uncaught ones the page recorded, and the browser console's severe messages."""
    return driver.execute_script("return window.diglmConsole.errors") + [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def send_and_wait(driver, send=lambda driver: driver.find_element(By.ID, "send").click()) -> dict:
    """``send`` (press Send) and wait for the page's answer to the request it made (the v2 answer
    carries the request's id): {sent, answer}."""
    before = driver.execute_script("return window.diglmConsole.lastSent?.requestId")
    send(driver)
    answered = "const {lastSent, lastAnswer} = window.diglmConsole; return lastSent && lastAnswer && lastSent.requestId === lastAnswer.id && lastSent.requestId"
    until(driver, lambda d: d.execute_script(answered) not in (None, False, before), "the answer to Send")
    until(driver, lambda d: d.find_elements(By.ID, "decision"), "the decision on the page")
    return driver.execute_script("return {sent: window.diglmConsole.lastSent, answer: window.diglmConsole.lastAnswer}")


def api_answer(service: str, sent: dict) -> dict[str, list]:
    """The API's answer for the pixels the page sent: output name -> data."""
    body = {"inputs": [{"name": "input", "shape": sent["shape"], "datatype": "FP32", "data": sent["data"]}]}
    response = httpx.post(f"{service}/v2/models/{sent['model']}/versions/{sent['version']}/infer", json=body, timeout=READY_TIMEOUT_S)
    assert response.status_code == 200, response.text
    return {output["name"]: output["data"] for output in response.json()["outputs"]}


def assert_page_shows(driver, api: dict[str, list]) -> None:
    """The page's label and decision line say what the API answered for the same pixels."""
    label, decision = driver.find_element(By.ID, "label").text, driver.find_element(By.ID, "decision").text
    assert label == str(api["label"][0])
    if api["accepted"][0]:
        assert decision.startswith("accepted"), decision
    else:
        assert decision.startswith("rejected") and decision.endswith(f"reason: {api['rejected_by'][0]}"), decision


def clear(driver) -> None:
    driver.find_element(By.ID, "clear").click()


def test_page_loads_without_errors_and_asks_no_other_host(page, service):
    assert page.find_element(By.CSS_SELECTOR, "#models tbody td").text == "tiny"
    assert "READY" in page.find_element(By.CSS_SELECTOR, "#models tbody tr").text
    resources = page.execute_script("return performance.getEntriesByType('resource').map(entry => entry.name)")
    assert any(name.endswith("/console/console.js") for name in resources) and any("/v2/models/tiny" in name for name in resources)
    assert all(name.startswith(service + "/") for name in resources), resources
    assert page.execute_script("return performance.getEntriesByName('console-ready').length") == 1
    assert errors_of(page) == []


def test_drawn_digit_gets_the_apis_label_and_decision(page, service):
    clear(page)
    draw(page)  # a "7" with pointer actions
    outcome = send_and_wait(page)
    sent = np.array(outcome["sent"]["data"]).reshape(outcome["sent"]["shape"])
    assert sent.max() > 0 and (sent == 0).sum() > sent.size // 3, "the drawn stroke inks some pixels, not all"
    assert np.array_equal(sent, np.round(sent)), "the tiny model's inputs are whole levels 0..16"
    api = api_answer(service, outcome["sent"])
    page_outputs = {output["name"]: output["data"] for output in outcome["answer"]["outputs"]}
    assert page_outputs["label"] == api["label"] and page_outputs["accepted"] == api["accepted"]
    assert page_outputs["p_value"][0] == pytest.approx(api["p_value"][0], rel=1e-6)
    assert_page_shows(page, api)
    assert errors_of(page) == []


def test_blank_canvas_is_rejected_with_its_reason_and_listed_with_its_evidence(page, service):
    clear(page)
    outcome = send_and_wait(page)
    assert set(outcome["sent"]["data"]) == {0}
    api = api_answer(service, outcome["sent"])
    assert api["accepted"] == [False], "a blank input is unlike any digit"
    assert_page_shows(page, api)
    # The rejection appears in the list under the request id the page sent; selecting it draws one
    # histogram per gate score, each with the input's value marked.
    item = f"#rejections button[data-id='{outcome['sent']['requestId']}#0']"
    until(page, lambda d: d.find_elements(By.CSS_SELECTOR, item), "the rejection in the list")
    page.find_element(By.CSS_SELECTOR, item).click()
    gate = httpx.get(f"{service}/v2/models/tiny/gate", timeout=10).json()
    names = [score["name"] for score in gate["scores"]]
    charts = until(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#rejection-detail svg.histogram"), "the rejection's histograms")
    assert [chart.get_attribute("data-score") for chart in charts] == names
    assert len(page.find_elements(By.CSS_SELECTOR, "#rejection-detail svg.histogram line.marker")) == len(names)
    assert page.find_element(By.CSS_SELECTOR, "#rejection-detail #decision").text.endswith(f"reason: {api['rejected_by'][0]}")
    assert errors_of(page) == []


def test_dropped_npz_and_image_get_the_apis_answer(page, service, tmp_path):
    digit = held_out_digits(1)[0][0]  # (8, 8), values 0..16
    archive = tmp_path / "digit.npz"
    np.savez_compressed(archive, x=digit[None].astype(np.float64))  # deflated, with numpy's zip64 sizes
    image = tmp_path / "digit.png"
    Image.fromarray(np.uint8(255 - digit * 255 / 16)).resize((64, 64), Image.NEAREST).save(image)  # dark ink on white paper
    for path in (archive, image):
        outcome = send_and_wait(page, lambda driver: driver.find_element(By.ID, "file").send_keys(str(path)))
        sent = np.array(outcome["sent"]["data"]).reshape(8, 8)
        if path == archive:
            assert np.array_equal(sent, digit)
        else:  # fitted into the grid by the browser and inverted: each pixel within a level of the digit's
            assert np.abs(sent - digit).max() <= 1
        api = api_answer(service, outcome["sent"])
        assert {output["name"]: output["data"] for output in outcome["answer"]["outputs"]}["label"] == api["label"]
        assert_page_shows(page, api)
    assert errors_of(page) == []


def test_rates_count_the_rejections(page):
    def rejected_rates(driver) -> str:
        return driver.find_element(By.CSS_SELECTOR, "#models tbody tr td:last-child").text

    until(page, lambda d: any(ch.isalpha() for ch in rejected_rates(d)), "a rejection rate by reason")


def test_key_prompt_with_api_keys(checkpoint):
    with serve(checkpoint, api_keys=[KEY]) as url:
        assert httpx.get(f"{url}/v2/models/tiny/gate", timeout=10).status_code == 401, "the console's routes need the key like any client"
        with browser.chromium(390, 844) as driver:
            driver.get(f"{url}/console")
            dialog = until(driver, lambda d: d.find_element(By.ID, "key-dialog").is_displayed() and d.find_element(By.ID, "key-dialog"), "the key prompt")
            assert driver.find_elements(By.CSS_SELECTOR, "#models tbody tr") == []
            driver.find_element(By.ID, "key-input").send_keys("not-the-key")
            driver.find_element(By.ID, "key-submit").click()
            until(driver, lambda d: "refused" in d.find_element(By.ID, "key-reason").text and dialog.is_displayed(), "the refusal of a wrong key")
            driver.find_element(By.ID, "key-input").send_keys(KEY)
            driver.find_element(By.ID, "key-submit").click()
            until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#models tbody tr"), "the models table after the key")
            assert not dialog.is_displayed()
            assert driver.execute_script("return [sessionStorage.getItem('diglm.console.key'), localStorage.length]") == [KEY, 0]
