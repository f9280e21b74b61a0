"""The pages in headless Chromium (system chromium + chromedriver, driven by Selenium) against a
running service (uvicorn on a free port) over demo data. Saves the screenshots in docs/img/.

Run under the heavy-test lock: flock /tmp/lang1ops-heavy.lock .venv/bin/pytest tests/serving/views/test_browser.py
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.serving.views.conftest import KEYS, bearer, build_app
from tests.support import require_binary

SCREENSHOTS = Path(__file__).resolve().parents[3] / "docs" / "img"
WAIT_S = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_service(world):
    """A fresh app instance (new Store on the same database) served by uvicorn in a thread."""
    import uvicorn

    app, store = build_app(world)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        store.dispose()


@pytest.fixture(scope="module")
def browser():
    chromium = require_binary("chromium", "apt-get install -y chromium chromium-driver")
    chromedriver = require_binary("chromedriver", "apt-get install -y chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, timeout=WAIT_S):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # the tables are re-rendered while we look: retry on stale or not-yet-present elements
    return WebDriverWait(driver, timeout, ignored_exceptions=[StaleElementReferenceException,
                                                              NoSuchElementException]).until(condition)


def sign_in(driver, base: str, page: str, role: str = "care-manager") -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/ui/{page}")
    field = wait(driver, lambda d: d.find_element(By.ID, "token") if d.find_element(By.ID, "signin").is_displayed()
                 or d.execute_script("return !sessionStorage.getItem('lang1ops.token')") else None)
    field.send_keys(KEYS[role])
    driver.find_element(By.CSS_SELECTOR, "#signin button[type=submit]").click()


def loaded(driver, marker: str):
    from selenium.webdriver.common.by import By

    try:
        return wait(driver, lambda d: marker in d.find_element(By.ID, "status").text and d.find_element(By.ID, "status"))
    except Exception:
        logs = driver.get_log("browser") if hasattr(driver, "get_log") else []
        raise AssertionError(f"page status {driver.find_element(By.ID, 'status').text!r}; console {logs}") from None


def screenshot(driver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(height + 40, 800), 2400))
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(SCREENSHOTS / f"views-{name}.png"))
    driver.set_window_size(1400, 1000)


def column(driver, index: int, attribute: str = "data-sort") -> list[str]:
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, f"#worklist tbody tr td:nth-child({index})")
    return [c.get_attribute(attribute) if attribute else c.text for c in cells]


def test_worklist_sorts_filters_and_outreach_survives_a_restart(views_world, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    encounter = views_world["stays"][5].encounter_id
    with running_service(views_world) as base:
        sign_in(browser, base, "worklist")
        loaded(browser, "highest risk first")
        risks = [float(v) for v in column(browser, 2) if v]
        assert len(risks) >= 16 and risks == sorted(risks, reverse=True)
        screenshot(browser, "worklist")

        header = browser.find_element(By.CSS_SELECTOR, "#worklist th[data-key=readmission]")
        header.click()  # ascending; unscored rows (no value) sort first
        ascending = [float(v) for v in column(browser, 2) if v]
        assert ascending == sorted(ascending) and column(browser, 2)[0] == ""
        browser.find_element(By.CSS_SELECTOR, "#worklist th[data-key=unit]").click()
        units = column(browser, 6, attribute="")
        assert units == sorted(units, key=str.lower)

        Select(browser.find_element(By.ID, "f-unit")).select_by_visible_text("MICU")
        Select(browser.find_element(By.ID, "f-status")).select_by_value("admitted")
        browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
        wait(browser, lambda d: all(r.get_attribute("data-unit") == "MICU"
                                    for r in d.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")))
        statuses = column(browser, 7, attribute="")
        assert statuses and set(statuses) == {"admitted"}

        Select(browser.find_element(By.ID, "f-unit")).select_by_value("")
        Select(browser.find_element(By.ID, "f-status")).select_by_value("")
        browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
        row = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, f"#worklist tr[data-encounter='{encounter}']"))
        Select(row.find_element(By.CSS_SELECTOR, "select.outreach")).select_by_value("reached")
        loaded(browser, f"Outreach for {encounter} saved: reached")

    # a new app instance and a new server process-equivalent on the same database
    with running_service(views_world) as base:
        r = httpx.get(f"{base}/views/api/worklist", headers=bearer("reader"))
        row = next(x for x in r.json()["rows"] if x["encounter"] == encounter)
        assert row["outreach"]["status"] == "reached" and row["outreach"]["actor"] == "care-manager-user"
        sign_in(browser, base, "worklist", role="reader")  # a new origin (port): sign in again
        loaded(browser, "highest risk first")
        select = browser.find_element(By.CSS_SELECTOR, f"#worklist tr[data-encounter='{encounter}'] select.outreach")
        assert Select(select).first_selected_option.get_attribute("value") == "reached"


def test_bed_board_page_shows_the_api_numbers(views_world, browser):
    from selenium.webdriver.common.by import By

    with running_service(views_world) as base:
        sign_in(browser, base, "beds", role="reader")
        loaded(browser, "As of")
        api = httpx.get(f"{base}/views/api/beds", params={"days": 7}, headers=bearer("reader")).json()
        cells = browser.find_elements(By.CSS_SELECTOR, "td[data-kind]")
        shown = {(c.get_attribute("data-unit"), c.get_attribute("data-date"), c.get_attribute("data-kind")):
                 (float(c.get_attribute("data-expected")), int(c.get_attribute("data-low")), int(c.get_attribute("data-high")),
                  c.text.split(" ")[0]) for c in cells}
        expected = {(u["unit"], d["date"], kind): d[kind] for u in api["units"] for d in u["days"]
                    for kind in ("discharges", "occupied")}
        assert set(shown) == set(expected) and len(expected) == 4 * 7 * 2
        for key, (mean, low, high, text) in shown.items():
            assert (mean, low, high) == (expected[key]["expected"], expected[key]["low"], expected[key]["high"]), key
            assert text == f"{expected[key]['expected']:.1f}"
        # the patients behind a number
        first = browser.find_element(By.CSS_SELECTOR, "td[data-kind=discharges] button.count")
        first.click()
        rows = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#patients-table tbody tr"))
        unit = api["units"][0]
        assert len(rows) == len(unit["days"][0]["patients"])
        screenshot(browser, "beds")


def test_mlops_page_lists_the_promotion(views_world, browser):
    from selenium.webdriver.common.by import By

    with running_service(views_world) as base:
        sign_in(browser, base, "mlops", role="reader")
        loaded(browser, "Loaded")
        promotions = browser.find_elements(By.CSS_SELECTOR, "#registry-events tr.action-promote")
        assert promotions and "v0001" in promotions[0].text and "mlops-lead" in promotions[0].text
        assert browser.find_elements(By.CSS_SELECTOR, "#registry-events tr.action-refuse")
        assert "v0001" in browser.find_element(By.ID, "model").text
        assert browser.find_elements(By.CSS_SELECTOR, "#performance tbody tr")
        assert browser.find_elements(By.CSS_SELECTOR, "#performance-chart svg polyline")
        drift = browser.find_element(By.ID, "drift").text
        assert "No drift checks yet" in drift or "Evidently" in drift
        screenshot(browser, "mlops")


def test_a_wrong_token_is_refused_in_the_page(views_world, browser):
    from selenium.webdriver.common.by import By

    with running_service(views_world) as base:
        browser.get(f"{base}/ui/worklist")
        browser.execute_script("sessionStorage.clear()")
        browser.get(f"{base}/ui/worklist")
        field = wait(browser, lambda d: d.find_element(By.ID, "token"))
        field.send_keys("not-a-key")
        browser.find_element(By.CSS_SELECTOR, "#signin button[type=submit]").click()
        message = wait(browser, lambda d: d.find_element(By.ID, "signin-error").text)
        assert "not accepted" in message
