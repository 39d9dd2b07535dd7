"""The web page of ``dpda serve`` in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by selenium; no browser is downloaded): real files uploaded through the
page of the real service, the verdict read back from the page and checked against the API's."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from tiny_runs import RATE, served

from dpda.deploy.package import write_package
from dpda.deploy.service import Limits, create_app
from dpda.evaluate.evaluation import load_detector

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WAIT = 30.0  # seconds a page gets to answer


@pytest.fixture(scope="module", autouse=True)  # first: a missing browser skips before any training
def driver() -> Iterator[webdriver.Chrome]:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        message = f"{' and '.join(missing)} not found (Debian's chromium and chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: .ci/run must install chromium and chromium-driver with apt", pytrace=False)
        pytest.skip(message)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
        "--use-fake-ui-for-media-stream",  # grant the microphone without asking
        "--use-fake-device-for-media-stream",  # a microphone that plays a beep
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def package(lfcc_run, tmp_path_factory) -> Path:
    return write_package(lfcc_run[1], tmp_path_factory.mktemp("packages") / "tiny-lfcc")


@pytest.fixture(scope="module")
def service(package) -> Iterator[str]:
    """The base URL of the real service."""
    app = create_app(load_detector(package, torch.device("cpu")), torch.device("cpu"), Limits(window=2.0, hop=1.0))
    with served(app, WAIT) as base:
        yield base


@pytest.fixture
def page(driver, service) -> webdriver.Chrome:
    """The page, freshly loaded with its model card shown, and the console read so far dropped."""
    driver.get_log("browser")
    driver.get(service)
    WebDriverWait(driver, WAIT).until(lambda d: d.find_element(By.ID, "model-name").text)
    return driver


def wav(path: Path, seconds: float, seed: int = 0) -> Path:
    """A real 16-bit WAV: a tone in noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    audio = 0.2 * np.sin(2 * np.pi * 150 * t) + np.random.default_rng(seed).normal(0, 0.05, len(t))
    sf.write(str(path), audio, RATE, subtype="PCM_16")
    return path


def api(service: str, path: Path) -> httpx.Response:
    """What the service answers to ``path`` sent directly, not through the page."""
    return httpx.post(f"{service}/v1/score", files={"file": (path.name, path.read_bytes())}, timeout=WAIT)


def state(driver: webdriver.Chrome) -> str:
    return driver.execute_script("return document.body.dataset.state")


def upload(driver: webdriver.Chrome, path: Path) -> str:
    """Choose ``path`` in the page's file input; the state the page settles in."""
    driver.find_element(By.ID, "file-input").send_keys(str(path))
    WebDriverWait(driver, WAIT).until(lambda d: state(d) in ("done", "error"))
    return state(driver)


def text(driver: webdriver.Chrome, element: str) -> str:
    return driver.find_element(By.ID, element).text


def recorded(driver: webdriver.Chrome) -> float:
    """The seconds recorded so far, as the page's status says."""
    found = re.fullmatch(r"Recording… ([\d.]+) s", text(driver, "status"))
    return float(found[1]) if found else 0.0


def console_errors(driver: webdriver.Chrome, allowed: str | None = None) -> list[dict]:
    """The console's errors since the page loaded, less those whose message holds ``allowed``."""
    return [
        entry
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and not (allowed and allowed in entry["message"])
    ]


def canvas_pixels(driver: webdriver.Chrome) -> dict:
    """How many of the waveform canvas's pixels are not its background, and how many are dark."""
    return driver.execute_script(
        """
        const canvas = document.getElementById("waveform");
        const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        let painted = 0, dark = 0;
        for (let i = 0; i < data.length; i += 4) {
          if (data[i] !== 0xf6 || data[i + 1] !== 0xf8 || data[i + 2] !== 0xfa) painted++;
          if (data[i] < 64 && data[i + 1] < 64 && data[i + 2] < 64) dark++;
        }
        return {painted, dark, total: data.length / 4, width: canvas.width, drawn: canvas.dataset.drawn};
        """
    )


def test_the_page_shows_the_model_card(page, service):
    facts = httpx.get(f"{service}/v1/model").json()
    assert text(page, "model-name") == facts["name"] == "tiny"
    card = text(page, "model-facts")
    assert "lfcc_lcnn" in card and "16000 Hz" in card
    assert f"score < {facts['decision_threshold']:.4f} is spoof" in card
    assert "50 MB, 600 s" in card and "scored in 2 s windows every 1 s" in card
    rows = [row.text.split() for row in page.find_elements(By.CSS_SELECTOR, "#eval tbody tr")]
    assert [row[:2] for row in rows] == [["heldout", "10"]] and rows[0][3] == "%"
    heldout = facts["eval"]["heldout"]
    shown = [float(cell) for cell in (rows[0][2], *rows[0][4:])]
    expected = [100 * heldout["eer"], heldout["min_dcf"], heldout["act_dcf"], heldout["cllr"]]
    assert shown == pytest.approx(expected, abs=5e-3)
    assert state(page) == "idle" and console_errors(page) == []


def test_an_uploaded_file_gets_the_verdict_the_api_gives(page, service, tmp_path):
    path = wav(tmp_path / "short.wav", 1.0)
    answer = api(service, path).json()
    assert upload(page, path) == "done"
    assert text(page, "decision") == answer["decision"]
    shown = re.fullmatch(r"P\(spoof\) = (\d+\.\d) %", text(page, "probability"))
    assert shown and float(shown[1]) == pytest.approx(100 * answer["p_spoof"], abs=0.05 + 1e-9)
    assert float(text(page, "score")) == answer["score"]
    assert "segments" not in answer and not page.find_element(By.ID, "segments").is_displayed()
    assert canvas_pixels(page)["drawn"] == "1"
    assert console_errors(page) == []


def test_a_long_file_shows_each_segment_over_its_waveform(page, service, tmp_path):
    path = wav(tmp_path / "long.wav", 3.0, seed=1)
    answer = api(service, path).json()
    assert len(answer["segments"]) == 2  # 2 s windows every 1 s over 3 s
    assert upload(page, path) == "done"
    rows = [row.text.split() for row in page.find_elements(By.CSS_SELECTOR, "#segments tbody tr")]
    assert len(rows) == len(answer["segments"])
    for cells, segment in zip(rows, answer["segments"]):
        assert cells[:2] == [f"{segment['start']:.2f}", f"{segment['end']:.2f}"]
        assert float(cells[2]) == pytest.approx(segment["score"], abs=5e-5)
        assert float(cells[3]) == pytest.approx(segment["p_spoof"], abs=5e-5)
    assert text(page, "decision") == answer["decision"]
    pixels = canvas_pixels(page)
    assert pixels["drawn"] == "2"
    assert pixels["painted"] > pixels["total"] // 2  # the segments' colours lie behind the whole waveform
    assert pixels["dark"] > pixels["width"]  # the decoded waveform: at least a pixel a column
    assert console_errors(page) == []


def test_a_file_that_is_not_audio_shows_the_apis_error(page, service, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not audio at all\n" * 20)
    refused = api(service, path)
    assert refused.status_code == 415
    assert upload(page, path) == "error"
    assert text(page, "error") == refused.json()["error"]["message"]
    assert not page.find_element(By.ID, "result").is_displayed()
    # the refused request is the only error the console shows: no script failed
    assert console_errors(page, allowed="/v1/score - Failed to load resource") == []


def test_a_recording_from_the_microphone_is_scored(page):
    page.find_element(By.ID, "record").click()
    WebDriverWait(page, WAIT).until(lambda d: recorded(d) >= 1.5)
    assert state(page) == "recording"
    assert page.find_element(By.ID, "record").get_attribute("aria-pressed") == "true"
    page.find_element(By.ID, "record").click()
    WebDriverWait(page, WAIT).until(lambda d: state(d) in ("done", "error"))
    assert state(page) == "done", text(page, "error")
    assert text(page, "decision") in ("spoof", "bonafide")
    assert float(text(page, "duration").removesuffix(" s")) >= 1.5
    assert canvas_pixels(page)["dark"] > 0
    assert console_errors(page) == []
