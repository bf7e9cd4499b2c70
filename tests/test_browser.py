"""The page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) against a live
uvicorn on 127.0.0.1: typing, drag and drop, the larger view, "more like this", the threshold slider, keyboard,
filters, the collection switcher, audio, the token. Screenshots go to <pytest tmp>/screenshots."""
from __future__ import annotations

import base64
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from conftest import DEV_PHOTOS  # noqa: E402
from served import LiveServer, build_home  # noqa: E402
from xsearch.server import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                 reason="no chromium + chromedriver on PATH (apt-get install chromium chromium-driver)")]


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def site(tmp_path_factory, mini):
    """A live server over a generated collection 'gen' and a copy 'gen2'."""
    home, folder = build_home(tmp_path_factory.mktemp("site"), mini)
    with LiveServer(create_app(home, ["gen", "gen2"])) as server:
        server.wait_ready()
        server.folder = folder
        yield server


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,950",
                "--disable-extensions", "--no-first-run", "--mute-audio"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 30):
    """Until ``condition`` holds; a re-render between finding and reading an element just means "poll again"."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=[StaleElementReferenceException]).until(lambda d: condition(d))


def cards(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#grid .card")


def open_page(driver, url: str) -> None:
    driver.get(url)
    wait(driver, lambda d: d.execute_script("return document.querySelectorAll('#collection option').length") > 0)


def search(driver, text: str) -> None:
    box = driver.find_element(By.ID, "q")
    box.clear()
    box.send_keys(text)
    wait(driver, lambda d: cards(d) and "result" in d.find_element(By.ID, "status").text)


def first_paths(driver, n: int = 3) -> list[str]:
    return [c.get_attribute("data-path") for c in cards(driver)[:n]]


def image_loaded(driver, element) -> bool:
    return driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", element)


def api_hits(site, **params) -> list[dict]:
    return httpx.get(site.url + "/api/search", params={"k": 60, **params}).json()["hits"]


def test_typing_shows_ranked_thumbnails(site, browser, shots):
    open_page(browser, site.url)
    assert browser.find_element(By.ID, "empty").is_displayed()
    search(browser, "a red ball")
    expected = api_hits(site, q="a red ball", collection="gen")
    wait(browser, lambda d: len(cards(d)) == len(expected))
    assert [c.get_attribute("data-id") for c in cards(browser)] == [str(h["id"]) for h in expected]
    first = cards(browser)[0].find_element(By.CSS_SELECTOR, "img.thumb")
    wait(browser, lambda d: image_loaded(d, first))
    assert cards(browser)[0].find_element(By.CSS_SELECTOR, ".badge").text == f"{expected[0]['score']:.3f}"
    browser.save_screenshot(str(shots / "typed-query.png"))


def test_dropping_an_image_searches_by_it(site, browser, shots):
    open_page(browser, site.url)
    data = base64.b64encode((site.folder / "checker.png").read_bytes()).decode()
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const file = new File([bytes], "dropped.png", {type: "image/png"});
        const dt = new DataTransfer();
        dt.items.add(file);
        for (const type of ["dragenter", "dragover", "drop"]) {
          document.body.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""", data)
    wait(browser, lambda d: cards(d) and d.find_element(By.ID, "queryChip").is_displayed())
    assert first_paths(browser, 1)[0].endswith("/checker.png")
    assert cards(browser)[0].find_element(By.CSS_SELECTOR, ".badge").text in ("1.000", "0.999")
    assert browser.find_element(By.ID, "queryChipName").text == "dropped.png"
    assert not browser.find_element(By.ID, "dropzone").is_displayed()
    browser.save_screenshot(str(shots / "dropped-image.png"))
    browser.find_element(By.ID, "queryChipClear").click()
    wait(browser, lambda d: not d.find_element(By.ID, "queryChip").is_displayed())


def test_open_a_result_step_through_more_like_this_and_escape(site, browser, shots):
    open_page(browser, site.url)
    search(browser, "a red ball")
    first = cards(browser)[0]
    first_id, first_name = first.get_attribute("data-id"), Path(first.get_attribute("data-path")).name
    first.click()
    viewer = browser.find_element(By.ID, "viewer")
    wait(browser, lambda d: viewer.is_displayed() and d.find_elements(By.CSS_SELECTOR, "#viewerFacts dd"))
    assert browser.find_element(By.ID, "viewerName").text == first_name
    wait(browser, lambda d: image_loaded(d, d.find_element(By.ID, "viewerImage")))
    assert browser.find_elements(By.CSS_SELECTOR, "#viewerTags .chip")  # zero-shot tags stored by the fixture
    browser.save_screenshot(str(shots / "viewer.png"))
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    second_name = Path(cards(browser)[1].get_attribute("data-path")).name
    wait(browser, lambda d: d.find_element(By.ID, "viewerName").text == second_name)
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)
    wait(browser, lambda d: d.find_element(By.ID, "viewerName").text == first_name)
    browser.find_element(By.ID, "moreLike").click()
    wait(browser, lambda d: not viewer.is_displayed() and d.find_element(By.ID, "queryChip").is_displayed())
    expected = httpx.get(f"{site.url}/api/items/{first_id}/similar", params={"k": 60, "collection": "gen"}).json()["hits"]
    wait(browser, lambda d: [c.get_attribute("data-id") for c in cards(d)] == [str(h["id"]) for h in expected])
    assert first_id not in [c.get_attribute("data-id") for c in cards(browser)]
    assert browser.find_element(By.ID, "queryChipName").text == f"like {first_name}"
    cards(browser)[0].click()
    wait(browser, lambda d: viewer.is_displayed())
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    wait(browser, lambda d: not viewer.is_displayed())


def test_threshold_slider_hides_low_scores(site, browser, shots):
    open_page(browser, site.url)
    search(browser, "a red ball")
    before = len(cards(browser))
    scores = sorted(float(c.find_element(By.CSS_SELECTOR, ".badge").text) for c in cards(browser))
    slider = browser.find_element(By.ID, "threshold")
    slider.click()  # the middle of the track: 0.50
    slider.send_keys(Keys.HOME)
    target = scores[len(scores) // 2]
    while float(browser.find_element(By.ID, "thresholdValue").text) < target:
        slider.send_keys(Keys.ARROW_RIGHT)
    threshold = float(browser.find_element(By.ID, "thresholdValue").text)
    shown = [float(c.find_element(By.CSS_SELECTOR, ".badge").text) for c in cards(browser)]
    assert 0 < len(shown) < before and min(shown) >= threshold - 0.0005
    # badges are rounded to 3 decimals: a badge within 0.0005 of the threshold may be either side of it
    assert sum(s > threshold + 0.0005 for s in scores) <= len(shown) <= sum(s >= threshold - 0.0005 for s in scores)
    assert "below min score" in browser.find_element(By.ID, "status").text
    browser.save_screenshot(str(shots / "threshold.png"))
    slider.send_keys(Keys.HOME)
    wait(browser, lambda d: len(cards(d)) == before)


def test_keyboard_navigation(site, browser):
    open_page(browser, site.url)
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("/")
    assert browser.switch_to.active_element.get_attribute("id") == "q"
    browser.switch_to.active_element.send_keys("a blue square", Keys.ENTER)
    wait(browser, lambda d: cards(d) and "result" in d.find_element(By.ID, "status").text)
    browser.switch_to.active_element.send_keys(Keys.ARROW_DOWN)
    wait(browser, lambda d: cards(d)[0].get_attribute("aria-selected") == "true")
    body.send_keys(Keys.ARROW_RIGHT)
    wait(browser, lambda d: cards(d)[1].get_attribute("aria-selected") == "true")
    body.send_keys(Keys.ENTER)
    second = Path(cards(browser)[1].get_attribute("data-path")).name
    wait(browser, lambda d: d.find_element(By.ID, "viewer").is_displayed()
         and d.find_element(By.ID, "viewerName").text == second)
    body.send_keys(Keys.ESCAPE)
    wait(browser, lambda d: not d.find_element(By.ID, "viewer").is_displayed())


def test_filters_collection_switcher_and_audio_player(site, browser):
    open_page(browser, site.url)
    search(browser, "a shape")
    Select(browser.find_element(By.ID, "folder")).select_by_value(str(site.folder / "sub"))
    wait(browser, lambda d: len(cards(d)) == 2)
    assert all("/sub/" in p for p in first_paths(browser))
    Select(browser.find_element(By.ID, "folder")).select_by_value("")
    browser.find_element(By.CSS_SELECTOR, "#modality button[data-m=text]").click()
    wait(browser, lambda d: cards(d) and sorted(c.find_element(By.CSS_SELECTOR, ".kind").text.lower()
                                                for c in cards(d)) == ["caption", "text"])
    browser.find_element(By.CSS_SELECTOR, "#modality button[data-m=audio]").click()
    wait(browser, lambda d: len(cards(d)) == 1 and d.find_elements(By.CSS_SELECTOR, "#grid audio"))
    src = browser.find_element(By.CSS_SELECTOR, "#grid audio").get_attribute("src")
    status = browser.execute_async_script(
        "fetch(arguments[0], {headers: {Range: 'bytes=0-15'}}).then(r => arguments[1](r.status + ' ' + r.headers.get('content-type')))", src)
    assert status.split()[0] == "206" and "wav" in status
    tag_select = Select(browser.find_element(By.ID, "tag"))
    tag = next(o.get_attribute("value") for o in tag_select.options if o.get_attribute("value"))  # a stored tag
    tag_select.select_by_value(tag)
    browser.find_element(By.CSS_SELECTOR, "#modality button[data-m='']").click()
    expected = api_hits(site, q="a shape", tag=tag, collection="gen")
    assert expected
    wait(browser, lambda d: [c.get_attribute("data-id") for c in cards(d)] == [str(h["id"]) for h in expected])
    Select(browser.find_element(By.ID, "collection")).select_by_value("gen2")
    wait(browser, lambda d: len(cards(d)) == len(api_hits(site, q="a shape", collection="gen2")) and all(
        "collection=gen2" in i.get_attribute("src") for i in d.find_elements(By.CSS_SELECTOR, "#grid img")))
    assert Select(browser.find_element(By.ID, "tag")).first_selected_option.get_attribute("value") == ""


def test_token_in_the_url_once_then_images_and_api_work(site, browser, tmp_path):
    home = Path(site.folder).parent / "home"
    with LiveServer(create_app(home, ["gen"], token="s3cret", warm=False)) as guarded:
        open_page(browser, guarded.url + "/?token=s3cret")
        assert "token" not in browser.current_url
        search(browser, "a red ball")
        wait(browser, lambda d: image_loaded(d, cards(d)[0].find_element(By.CSS_SELECTOR, "img")))
        assert httpx.get(guarded.url + "/api/search?q=x").status_code == 401
        browser.execute_script("sessionStorage.clear(); document.cookie = 'xsearch_token=; path=/api; max-age=0'")
        browser.get(guarded.url)
        wait(browser, lambda d: "token" in d.find_element(By.ID, "status").text)


@pytest.mark.needs_data
def test_a_cat_shows_chelsea_first_on_dev_photos(tmp_path_factory, mini, browser, shots):
    home = tmp_path_factory.mktemp("devphotos")
    from xsearch import Collection

    with Collection.open(home, "dev-photos", encoder=mini, create=True) as col:
        col.add([DEV_PHOTOS])
    with LiveServer(create_app(home)) as server:
        server.wait_ready()
        open_page(browser, server.url)
        search(browser, "a cat")
        assert first_paths(browser, 1)[0].endswith("/chelsea.jpg")
        thumb = cards(browser)[0].find_element(By.CSS_SELECTOR, "img.thumb")
        wait(browser, lambda d: all(image_loaded(d, i) for i in d.find_elements(By.CSS_SELECTOR, "#grid img")))
        assert image_loaded(browser, thumb)
        time.sleep(0.3)
        browser.save_screenshot(str(shots / "dev-photos-a-cat.png"))
        target = os.environ.get("XSEARCH_DOCS_SCREENSHOT")  # e.g. docs/serve.png, refreshed by hand
        if target:
            browser.save_screenshot(target)
