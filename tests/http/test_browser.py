"""The web page in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
driven by Selenium) against a real server on 127.0.0.1: upload Set5 images, wait for the
results (a big one through the jobs API), check their size, move the slider, see an error,
and save a 1280x800 screenshot to $LSRCNN_SCREENSHOT_DIR (default `.ci-artifacts/`).
Skipped, saying why, where Chromium or Selenium is missing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import ROOT, SET5
from tests.server import metric, start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

# CI sets LSRCNN_REQUIRE_BROWSER=1: there a missing browser is a failure, not a skip.
REQUIRED = os.environ.get("LSRCNN_REQUIRE_BROWSER") == "1"
if not (CHROMIUM and DRIVER):
    if REQUIRED:
        raise RuntimeError("LSRCNN_REQUIRE_BROWSER=1 but chromium or chromedriver is missing")
    pytest.skip("no headless Chromium here: apt-get install chromium chromium-driver "
                "(.ci/run does)", allow_module_level=True)
pytestmark = pytest.mark.slow
webdriver = pytest.importorskip("selenium.webdriver",
                                reason="selenium missing: pip install -e '.[dev]'")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

WIDTH, HEIGHT = 1280, 800


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("browser") / "server.log"
    with open(log, "wb") as out:
        proc, url = start_server("app", {}, timeout_s=120, output=out)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars"):
        options.add_argument(arg)
    # The driver given by path: Selenium must not go looking for one on the network.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    try:
        yield driver
    finally:
        driver.quit()


def _upscale(driver: webdriver.Chrome, path: Path, scale: int | str, kind: str = "auto",
             **custom: str) -> None:
    driver.find_element(By.ID, "file").send_keys(str(path))
    # Waits are on events with generous caps, never fixed sleeps: a loaded machine is slow.
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "go").is_enabled())
    radio = driver.find_element(By.CSS_SELECTOR, f"input[name=scale][value='{scale}']")
    driver.execute_script("arguments[0].click()", radio)
    for field, value in custom.items():
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    radio = driver.find_element(By.CSS_SELECTOR, f"input[name=kind][value='{kind}']")
    driver.execute_script("arguments[0].click()", radio)
    driver.find_element(By.ID, "go").click()
    WebDriverWait(driver, 300).until(
        lambda d: d.find_element(By.ID, "compare").get_attribute("data-ready") == "true"
        or d.find_element(By.ID, "error").is_displayed())
    assert not driver.find_element(By.ID, "error").is_displayed(), \
        driver.find_element(By.ID, "error").text


def _natural_size(driver: webdriver.Chrome) -> tuple[int, int]:
    w, h = driver.execute_script(
        "const i = document.getElementById('after'); return [i.naturalWidth, i.naturalHeight]")
    return w, h


def test_the_page_upscales_compares_downloads_and_shows_errors(
        server: str, browser: webdriver.Chrome, tmp_path: Path) -> None:
    browser.get(f"{server}/")
    # On a loaded machine the page may still be loading when get() returns: wait for it.
    WebDriverWait(browser, 60).until(lambda d: d.title == "LSRCNN upscaler")

    assert httpx.get(f"{server}/favicon.ico").status_code == 200
    assert browser.execute_script(
        "return document.querySelector('link[rel=icon]').getAttribute('href')") \
        == "/static/favicon.svg"

    # 512x512: big enough for the jobs API, with its progress. The download keeps the name.
    _upscale(browser, SET5 / "baby.png", 2)
    assert _natural_size(browser) == (1024, 1024)
    finished = httpx.get(f"{server}/metrics").text
    assert metric(finished, "lsrcnn_jobs_finished_total", status="done") == 1
    assert browser.find_element(By.ID, "download").get_attribute("download") == "baby_x2.png"

    # 288x288: straight through /upscale.
    _upscale(browser, SET5 / "bird.png", 3)
    assert _natural_size(browser) == (864, 864)
    link = browser.find_element(By.ID, "download")
    assert link.is_displayed() and link.get_attribute("download") == "bird_x3.png"
    assert link.get_attribute("href").startswith("blob:")

    slider = browser.find_element(By.ID, "slider")
    assert slider.get_attribute("value") == "50"
    ActionChains(browser).click_and_hold(slider).move_by_offset(-170, 0).release().perform()
    value = float(slider.get_attribute("value"))
    assert 5 < value < 45
    clip = browser.execute_script(
        "return getComputedStyle(document.getElementById('after')).clipPath")
    assert f"{value:g}%" in clip, clip  # the output is shown right of the handle only

    out = Path(os.environ.get("LSRCNN_SCREENSHOT_DIR", ROOT / ".ci-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(out / "page.png"))

    # 1:1: the output at its own pixels, panned by dragging; Fit brings the fitted view back.
    browser.find_element(By.ID, "actual").click()
    after = browser.find_element(By.ID, "after")
    assert after.size["width"] == 864 and after.size["height"] == 864
    x0, y0 = after.location["x"], after.location["y"]
    compare = browser.find_element(By.ID, "compare")
    room = browser.execute_script(
        "const c = arguments[0]; return [864 - c.clientWidth, 864 - c.clientHeight]", compare)
    ActionChains(browser).move_to_element(compare).click_and_hold().move_by_offset(
        -120, -40).release().perform()
    # Panned by what was dragged, as far as the image reaches past the viewer.
    assert (after.location["x"], after.location["y"]) == (x0 - min(120, room[0]),
                                                          y0 - min(40, room[1]))
    assert room[0] > 0 and after.location["x"] < x0
    assert browser.find_element(By.ID, "actual").get_attribute("aria-pressed") == "true"
    assert browser.save_screenshot(str(out / "page-1to1.png"))
    browser.find_element(By.ID, "fit").click()
    assert after.size["width"] < 864

    # Custom size: a target width (the height keeps the aspect ratio), JPEG at a quality.
    Select(browser.find_element(By.ID, "format")).select_by_value("jpeg")
    assert browser.find_element(By.ID, "quality-field").is_displayed()
    _upscale(browser, SET5 / "bird.png", "custom", width="500")
    assert _natural_size(browser) == (500, 500)
    assert browser.find_element(By.ID, "download").get_attribute("download") == \
        "bird_500x500.jpg"
    browser.find_element(By.ID, "width").clear()
    _upscale(browser, SET5 / "bird.png", "custom", factor="1.5")
    assert _natural_size(browser) == (432, 432)
    Select(browser.find_element(By.ID, "format")).select_by_value("")

    # The model choice: Auto (the default) gives a compressed JPEG the photo model and a
    # PNG the clean one; Clean and Photo force it. The page names the model it got.
    photo = tmp_path / "head.jpg"
    with Image.open(SET5 / "head.png") as img:
        img.convert("RGB").save(photo, "JPEG", quality=50)

    def used() -> str:
        return browser.find_element(By.ID, "sizes").get_attribute("data-model")

    assert browser.find_element(By.CSS_SELECTOR, "input[name=kind][value='auto']").is_selected()
    _upscale(browser, photo, 2)
    # q50: the strong photo model (x2 has one); the page names it.
    assert used() == "lsrcnn-lite-photo-strong-x2" and "lsrcnn-lite-photo-strong-x2" in \
        browser.find_element(By.ID, "sizes").text
    _upscale(browser, photo, 2, "clean")
    assert used() == "lsrcnn-lite-x2"
    _upscale(browser, SET5 / "bird.png", 2, "auto")
    assert used() == "lsrcnn-lite-x2"
    _upscale(browser, SET5 / "bird.png", 2, "photo")
    assert used() == "lsrcnn-lite-photo-x2"

    # A file that is no image: an error at once, no broken image, no upscale to press.
    bad = tmp_path / "notes.png"
    bad.write_text("a shopping list, not a picture")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "notes.png is not an image" in browser.find_element(By.ID, "error").text
    assert not browser.find_element(By.ID, "before").is_displayed()
    assert not browser.find_element(By.ID, "go").is_enabled()

