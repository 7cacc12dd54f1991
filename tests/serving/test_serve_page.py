"""``GET /``: the page to try the models, driven in headless Chromium with Selenium against a real server.

Chromium and chromedriver come from Debian (``apt-get install chromium chromium-driver``, done here when
running as root on Linux and they are missing); elsewhere the browser test is skipped with the reason,
except under CI on a root Linux machine, where a skip is a failure (the same rule as the container test).

``CATDOG_PAGE_SCREENSHOT=docs/page.png`` also writes the desktop screenshot there (the one in the docs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import requests
from PIL import Image
from serve_helpers import ExportedModel, Server, cat, encode, model_options, served

pytestmark = pytest.mark.slow

DESKTOP = (1280, 900)
PHONE = (390, 844)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


# --------------------------------------------------------------------------------------------------
# the page itself, without a browser
# --------------------------------------------------------------------------------------------------
def test_page_is_shipped_self_contained_and_accessible() -> None:
    from catdog.serving.page import PAGE

    html = PAGE.read_text(encoding="utf-8")
    for remote in ("http://", "https://", "//cdn", "<link ", ' src="http'):
        assert remote not in html, f"the page loads something from elsewhere ({remote!r})"
    assert '<label class="drop" id="drop">' in html and '<input id="file" type="file"' in html
    assert 'aria-live="polite"' in html and ":focus-within" in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html


# --------------------------------------------------------------------------------------------------
# the browser
# --------------------------------------------------------------------------------------------------
def _browser_paths() -> tuple[str | None, str | None]:
    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


def find_chromium(skip_or_fail: Callable[[str, str], NoReturn]) -> tuple[str, str]:
    """Paths of Chromium and chromedriver, installed from Debian when root on Linux; else skip (or fail under CI)."""
    chromium, driver = _browser_paths()
    apt_get = shutil.which("apt-get")
    if (not chromium or not driver) and sys.platform.startswith("linux") and os.geteuid() == 0 and apt_get:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([apt_get, "update"], check=False, capture_output=True, timeout=600, env=env)
        install = [apt_get, "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
        subprocess.run(install, check=False, capture_output=True, timeout=900, env=env)
        chromium, driver = _browser_paths()
    if not chromium or not driver:
        skip_or_fail(
            "headless Chromium and chromedriver are not installed (as root on Debian or Ubuntu: "
            "apt-get install chromium chromium-driver)",
            "Chromium",
        )
    return str(chromium), str(driver)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, skip_or_fail: Callable[[str, str], NoReturn]) -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        skip_or_fail("selenium is not installed (pip install 'catdog[dev]')", "Chromium")
    chromium, driver_path = find_chromium(skip_or_fail)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(
    models: dict[str, ExportedModel], no_torch_path: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    with served(model_options(models), tmp_path_factory.mktemp("server") / "serve.log", no_torch_path) as server:
        yield server


def test_get_root_serves_the_page_with_a_strict_content_policy(server: Server) -> None:
    response = requests.get(f"{server.url}/", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<input id="file" type="file"' in response.text  # the page, not LitServe's "litserve running"
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert requests.head(f"{server.url}/", timeout=10).status_code == 200


def _open(browser: Any, server: Server, size: tuple[int, int]) -> None:
    """The page at ``size`` (CSS pixels), once it lists every model from /health."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": size[0] < 600},
    )
    browser.get(f"{server.url}/")
    WebDriverWait(browser, 20).until(lambda d: "px" in d.find_element("id", "models").text)


def _choose(browser: Any, path: Path, state: str) -> None:
    """Pick ``path`` in the file input, as a person would, and wait until the page shows ``state``."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element("id", "file").send_keys(str(path))
    status = browser.find_element("id", "status")
    WebDriverWait(browser, 30).until(lambda d: status.get_attribute("data-state") in {"done", "error"})
    assert status.get_attribute("data-state") == state, status.text


def _cards(browser: Any) -> list[Any]:
    return browser.find_elements("css selector", "#results .card")


def test_a_cat_photo_gets_every_models_answer_as_the_api_gives_it(
    browser: Any, server: Server, models: dict[str, ExportedModel], tmp_path: Path
) -> None:
    _open(browser, server, DESKTOP)
    listed = browser.find_element("id", "models").text
    for m in models.values():
        assert f"{m.name}: tf_mobilenetv3_small_minimal_100, {m.config.image_size} px" in listed

    photo = tmp_path / "cat.jpg"
    photo.write_bytes(encode(cat(7, size=240), "JPEG", quality=92))
    _choose(browser, photo, "done")

    for m in models.values():
        expected = requests.post(f"{server.url}/predict/{m.name}", files={"file": photo.open("rb")}, timeout=30)
        assert expected.status_code == 200, expected.text
        body = expected.json()
        card = browser.find_element("id", f"card-{m.name}")
        assert card.find_element("css selector", "h2").text == m.name
        assert card.find_element("css selector", ".answer").text == body["label"]
        rows = card.find_elements("css selector", ".row")
        assert [row.get_attribute("data-label") for row in rows] == ["Cat", "Dog"]
        for row in rows:
            p = body["probabilities"][row.get_attribute("data-label")]
            assert float(row.get_attribute("data-probability")) == pytest.approx(p, abs=1e-9)
            assert row.find_element("css selector", ".pct").text == f"{100 * p:.1f} %"
            width = row.find_element("css selector", ".fill").value_of_css_property("width")
            track = row.find_element("css selector", ".track").size["width"]
            assert float(width.removesuffix("px")) == pytest.approx(p * track, abs=2), (width, track, p)
        assert f"{m.name}: {body['label']}" in browser.find_element("id", "status").text

    # Side by side at desktop width, nothing wider than the window.
    tops = {card.location["y"] for card in _cards(browser)}
    assert len(tops) == 1, tops
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    shot = tmp_path / "desktop.png"
    browser.save_screenshot(str(shot))
    assert Image.open(shot).size == DESKTOP
    if os.environ.get("CATDOG_PAGE_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["CATDOG_PAGE_SCREENSHOT"])


def test_a_text_file_gets_a_readable_message(browser: Any, server: Server, tmp_path: Path) -> None:
    _open(browser, server, DESKTOP)
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list: cat food, dog food\n")
    _choose(browser, notes, "error")
    status = browser.find_element("id", "status").text
    assert status == "notes.txt: This file is not an image the server can read.", status
    for card in _cards(browser):
        problem = card.find_element("css selector", ".problem").text
        assert problem.startswith("This file is not an image the server can read.")
        assert "not a decodable image" in problem  # the server's own detail, below the message
    assert not browser.find_element("id", "preview").is_displayed()


def test_phone_width_stacks_the_answers_without_sideways_scrolling(
    browser: Any, server: Server, tmp_path: Path
) -> None:
    _open(browser, server, PHONE)
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(encode(cat(8, size=200), "JPEG"))
    _choose(browser, photo, "done")
    first, second = _cards(browser)
    assert second.location["y"] >= first.location["y"] + first.size["height"]
    assert first.size["width"] == second.size["width"] and first.size["width"] <= PHONE[0]
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    browser.save_screenshot(str(tmp_path / "phone.png"))
    if os.environ.get("CATDOG_PAGE_SCREENSHOT"):
        target = Path(os.environ["CATDOG_PAGE_SCREENSHOT"])
        shutil.copyfile(tmp_path / "phone.png", target.with_name(target.stem + "-phone.png"))


def test_the_file_picker_is_reached_with_the_keyboard_and_shows_focus(browser: Any, server: Server) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    _open(browser, server, DESKTOP)
    browser.execute_script("document.activeElement && document.activeElement.blur()")
    drop = browser.find_element("id", "drop")
    assert drop.value_of_css_property("outline-style") == "none"
    ActionChains(browser).send_keys(Keys.TAB).perform()
    focused = browser.switch_to.active_element
    assert focused.get_attribute("id") == "file" and focused.get_attribute("type") == "file"
    assert browser.execute_script("return document.getElementById('file').labels.length") == 1
    assert drop.value_of_css_property("outline-style") == "solid"  # the visible focus ring
    assert browser.find_element("id", "results").get_attribute("aria-live") == "polite"


PAGE_KEY = "page-key-4b1f9e02c7d3a8"


@pytest.fixture(scope="module")
def keyed_server(
    models: dict[str, ExportedModel], no_torch_path: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("keyed") / "serve.log"
    with served(model_options(models), log, no_torch_path, env={"CATDOG_API_KEY": PAGE_KEY}) as server:
        yield server


def test_a_server_with_a_key_gets_it_from_the_page_and_then_answers(
    browser: Any, keyed_server: Server, tmp_path: Path
) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    _open(browser, keyed_server, DESKTOP)
    form = browser.find_element("id", "key-form")
    assert form.is_displayed()  # /health says a key is needed: the page asks at once
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encode(cat(9, size=200), "JPEG"))
    _choose(browser, photo, "error")  # no key yet: every model answers 401
    unauthorized = "photo.jpg: This server needs a valid API key: enter it above, then choose the image again."
    assert browser.find_element("id", "status").text == unauthorized

    status = browser.find_element("id", "status")
    for key, state in (("not-the-key-000000000", "error"), (PAGE_KEY, "done")):
        field = browser.find_element("id", "key")
        field.clear()
        field.send_keys(key)
        browser.execute_script("arguments[0].dataset.state = 'busy'", status)
        form.find_element("css selector", "button").click()  # asks again with the file already chosen
        WebDriverWait(browser, 30).until(lambda d: status.get_attribute("data-state") in {"done", "error"})
        assert status.get_attribute("data-state") == state, status.text

    expected = requests.post(
        f"{keyed_server.url}/predict/pretrained",
        files={"file": photo.open("rb")},
        headers={"Authorization": f"Bearer {PAGE_KEY}"},
        timeout=30,
    ).json()
    card = browser.find_element("id", "card-pretrained")
    assert card.find_element("css selector", ".answer").text == expected["label"]
    assert PAGE_KEY not in keyed_server.log_text()  # the key is sent, never logged
