"""The page at / in a real browser: headless Chromium (the system's `chromium` and `chromium-driver` packages),
driven by Selenium, submits a prompt and gets a video element that plays."""

from __future__ import annotations

import shutil

import pytest

from serve_helpers import PROMPT, running_service, wait_for

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
DRIVER = shutil.which("chromedriver")
MISSING = "needs the system packages chromium and chromium-driver (apt-get install chromium chromium-driver)"


@pytest.fixture
def browser():
    if BROWSER is None or DRIVER is None:
        pytest.skip(f"no headless browser: {MISSING}")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extras)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(flag)
    # an explicit driver path: Selenium never tries to fetch one
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


PLAYING = """
const video = document.querySelector('#result video');
if (!video) return null;
return {ready: video.readyState, duration: video.duration, error: video.error && video.error.code,
        width: video.videoWidth, height: video.videoHeight, src: video.currentSrc};
"""


@pytest.mark.parametrize("api_key", [None, "s3cret"], ids=["open", "with-api-key"])
def test_the_page_submits_a_prompt_and_plays_the_video(tmp_path, small_model_backend, browser, api_key):
    from selenium.webdriver.common.by import By

    with running_service(tmp_path / "data", small_model_backend, api_key=api_key) as (url, service):
        browser.get(url + "/")
        if api_key is not None:  # the page shows the key field once the API answers 401
            field = wait_for(lambda: (f := browser.find_element(By.ID, "api_key")).is_displayed() and f, 10)
            field.send_keys(api_key)
        browser.find_element(By.ID, "prompt").send_keys(PROMPT)
        browser.find_element(By.ID, "steps").send_keys("4")
        browser.find_element(By.ID, "submit").click()
        # HAVE_CURRENT_DATA (2) or more: the browser fetched the mp4 and decoded a frame
        video = wait_for(
            lambda: (v := browser.execute_script(PLAYING)) and v["ready"] >= 2 and v,
            60,
            every=0.1,
            what="a playable video on the page",
        )
        assert video["error"] is None and (video["width"], video["height"]) == (64, 64)
        assert video["duration"] == pytest.approx(17 / 8, abs=0.2)
        [job_id] = service.store.ids()
        # without a key the element streams the content route; with one, the page fetches it with the header
        assert (
            video["src"].endswith(f"/v1/videos/{job_id}/content")
            if api_key is None
            else video["src"].startswith("blob:")
        )
        listed = browser.find_elements(By.CSS_SELECTOR, "#jobs .job")
        assert len(listed) == 1 and PROMPT in listed[0].text and "completed" in listed[0].text
