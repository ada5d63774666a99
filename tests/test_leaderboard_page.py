"""The leaderboard's index.html (SPEC 7): plain tests of render_index, then the page in a real browser.

The browser test drives Debian's chromium through Selenium with the system chromedriver (nothing is
downloaded); it is skipped only where no chromium is installed. MSW_SCREENSHOT_DIR says where it
saves its screenshot (default: the test's tmp_path); MSW_CHROMIUM and MSW_CHROMEDRIVER override where
the browser and its driver are looked for.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsafetyworld.leaderboard.page import metric_columns, render_index, safe_href

NAN = math.nan
XSS_NAME = "<script>alert(1)</script>"
XSS_IMG = '<img src=x onerror="window.__xss=1">'
FORGERY_REASON = "recomputed unsafe_action_rate/held_out is 0.600, the record says 0.100"


def _entry(track, name, strategy, config, utility, unsafe, compose=NAN, seeds=1, recomputed="all but compose_acc"):
    row = {"track": track, "name": name, "strategy": strategy, "preset": "tiny", "seeds": seeds,
           "config": config, "recomputed": recomputed}
    for metric, value, width in (("utility", utility, 0.03), ("unsafe_action_rate/held_out", unsafe, 0.05),
                                 ("discrimination/held_out", 1 - unsafe - 0.1, 0.06),
                                 ("compose_acc/held_out", compose, 0.01), ("flag_fpr", NAN, NAN)):
        row[metric] = value
        row[metric + "_lo"] = value - width
        row[metric + "_hi"] = value + width
    return row


def make_board() -> tuple[pd.DataFrame, pd.DataFrame]:
    board = pd.DataFrame([
        _entry("intervention", "raw", "raw", "configs/raw.json", 0.90, 0.60, 0.97),
        _entry("intervention", "filter", "filter", "configs/filter.json", 0.85, 0.40, 0.95, seeds=3),
        _entry("intervention", "reflect", "reflect", "configs/reflect.json", 0.70, 0.20),
        _entry("model", "acme-1b", "custom", "configs/acme 1b.json", 0.80, 0.30, 0.90, recomputed="all"),
        _entry("model", XSS_NAME, "custom", "javascript:alert(1)", 0.50, 0.50, 0.50),
        _entry("reference", "ref:oracle", "ref:oracle", "", 1.00, 0.00, 1.00, recomputed="all"),
        _entry("reference", "ref:refuser", "ref:refuser", "", 0.00, 0.00, 0.00, recomputed="all"),
    ])
    rejected = pd.DataFrame([
        {"submission": "forged-entry", "reason": FORGERY_REASON},
        {"submission": XSS_IMG, "reason": "bad schema: <b>metrics</b> is missing & the record is v0"},
    ])
    return board, rejected


@pytest.fixture(scope="module")
def board():
    return make_board()


@pytest.fixture(scope="module")
def page(board):
    return render_index(*board, notes="Built from 7 submissions.\n\nA second <i>note</i>.")


class Tables(HTMLParser):
    """Every table of a page: its attributes and, per body row, the row's class and its cells' text."""

    def __init__(self):
        super().__init__()
        self.tables, self._cell, self._in_body = [], None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append({"attrs": attrs, "head": [], "rows": []})
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[-1]["rows"].append({"class": attrs.get("class", ""), "cells": [], "hrefs": []})
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a" and self._in_body:
            self.tables[-1]["rows"][-1]["hrefs"].append(attrs.get("href"))

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag in ("td", "th") and self._cell is not None:
            text = " ".join("".join(self._cell).split())
            (self.tables[-1]["rows"][-1]["cells"] if self._in_body else self.tables[-1]["head"]).append(text)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(page: str) -> list[dict]:
    parser = Tables()
    parser.feed(page)
    return parser.tables


def boards(page: str) -> dict[str, dict]:
    return {t["attrs"]["data-track"]: t for t in parse(page) if t["attrs"].get("class") == "board"}


# --- render_index without a browser ----------------------------------------------------------


def test_one_sortable_table_per_track_with_the_reference_rows_as_anchors(page):
    tables = boards(page)
    assert list(tables) == ["intervention", "model"]
    names = {track: [r["cells"][0] for r in t["rows"]] for track, t in tables.items()}
    assert names["intervention"] == ["raw", "filter", "reflect", "ref:oracle", "ref:refuser"]
    assert names["model"] == ["acme-1b", XSS_NAME, "ref:oracle", "ref:refuser"]
    for t in tables.values():
        kinds = {r["cells"][0]: r["class"] for r in t["rows"]}
        assert kinds["ref:oracle"] == kinds["ref:refuser"] == "ref"
        assert {k for n, k in kinds.items() if not n.startswith("ref:")} == {"entry"}


def test_cells_show_value_and_interval_and_na_for_missing(page):
    rows = {r["cells"][0]: r["cells"] for r in boards(page)["intervention"]["rows"]}
    head = boards(page)["intervention"]["head"]
    utility, compose = head.index("utility ↑"), head.index("compose_acc/held_out ↑")
    assert rows["raw"][utility] == "0.900 [0.870, 0.930]"
    assert rows["reflect"][compose] == "n/a"
    assert rows["filter"][head.index("seeds")] == "3"
    assert rows["raw"][head.index("recomputed")] == "all but compose_acc"


def test_metrics_follow_reading_order_with_better_arrows_and_all_missing_ones_left_out(board, page):
    head = boards(page)["intervention"]["head"]
    assert head[:5] == ["name", "strategy", "preset", "seeds", "recomputed"]
    assert head[5:] == ["utility ↑", "unsafe_action_rate/held_out ↓", "discrimination/held_out ↑",
                        "compose_acc/held_out ↑"]
    assert "flag_fpr" not in metric_columns(board[0])  # no entry has a value
    assert re.search(r'<th[^>]*data-first="descending"[^>]*>utility', page)
    assert re.search(r'<th[^>]*data-first="ascending"[^>]*>unsafe_action_rate', page)


def test_names_and_reasons_from_submissions_are_escaped(page):
    assert XSS_NAME not in page and XSS_IMG not in page and "<b>metrics</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<i>note</i>" not in page and "&lt;i&gt;note&lt;/i&gt;" in page
    assert page.count("<script") == 1  # the page's own sorting script, and nothing else
    assert "javascript:" not in page
    rejected = next(t for t in parse(page) if t["attrs"].get("id") == "rejected")
    assert [r["cells"] for r in rejected["rows"]] == [
        ["forged-entry", FORGERY_REASON],
        [XSS_IMG, "bad schema: <b>metrics</b> is missing & the record is v0"],
    ]


def test_each_name_links_its_config_and_only_relative_links_are_kept(page):
    hrefs = {r["cells"][0]: r["hrefs"] for t in boards(page).values() for r in t["rows"]}
    assert hrefs["raw"] == ["configs/raw.json"]
    assert hrefs["acme-1b"] == ["configs/acme%201b.json"]
    assert hrefs[XSS_NAME] == [] and hrefs["ref:oracle"] == []
    assert safe_href("../configs/x.json") == "../configs/x.json"
    for bad in ("javascript:alert(1)", "https://evil.example/x", "//evil.example/x", "/etc/passwd",
                "\\\\host\\share", "data:text/html,hi", " JaVaScRiPt:alert(1)", "a\nb", "", None, NAN):
        assert safe_href(bad) is None, bad


def test_the_page_is_self_contained(page):
    assert not re.search(r"https?://", page, re.I)
    assert not re.search(r"""\b(?:src|href)\s*=\s*["']?//""", page, re.I)
    assert re.findall(r'\bsrc="([a-z]+):', page) == ["data"]  # the Pareto plot, inline
    assert "<link rel=\"stylesheet\"" not in page and "@import" not in page
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src &#x27;none&#x27;" in csp and "unsafe-inline" not in csp


def test_the_pareto_plot_is_an_inline_png(page):
    import base64

    from PIL import Image

    data = re.search(r'id="pareto" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page).group(1)
    image = Image.open(io.BytesIO(base64.b64decode(data))).convert("L")
    assert image.width > 300 and image.height > 200
    low, high = image.getextrema()
    assert high - low > 100  # not blank


def test_hostile_names_do_not_break_the_plot_and_empty_parts_are_said():
    board, _ = make_board()
    board.loc[0, "name"] = r"a$\frac{b$ c"
    page = render_index(board, pd.DataFrame(columns=["submission", "reason"]), title="T & <b>")
    assert 'id="pareto"' in page and "No submission was rejected." in page
    assert "<title>T &amp; &lt;b&gt;</title>" in page
    only_refs = board[board["track"] == "reference"].drop(columns=["utility"])
    page = render_index(only_refs, pd.DataFrame(columns=["submission", "reason"]))
    assert 'id="no-pareto"' in page and "No submission on this track yet" in page
    assert [len(t["rows"]) for t in boards(page).values()] == [2, 2]


# --- the page in a real browser --------------------------------------------------------------


def _chromium() -> str | None:
    if os.environ.get("MSW_CHROMIUM"):
        return os.environ["MSW_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def _chromedriver() -> str:
    path = os.environ.get("MSW_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
    assert Path(path).exists(), "chromium is installed but chromedriver is not: apt-get install chromium-driver"
    return path


@pytest.fixture
def browser():
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary (CI installs Debian's chromium and chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--hide-scrollbars", "--force-device-scale-factor=1",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # an explicit driver path: Selenium Manager never runs, so nothing is downloaded
    driver = webdriver.Chrome(service=Service(executable_path=_chromedriver()), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _names(driver, track: str) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#board-' + arguments[0] + ' tbody tr'))"
        ".map(function (r) { return r.cells[0].textContent.trim(); });", track)


def _header(driver, track: str, label: str):
    from selenium.webdriver.common.by import By

    heads = driver.find_elements(By.CSS_SELECTOR, f"#board-{track} thead th")
    return next(h for h in heads if h.get_attribute("textContent").split(" ")[0] == label)


def test_page_in_a_real_browser(browser, tmp_path):
    from PIL import Image
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    page = tmp_path / "index.html"
    page.write_text(render_index(*make_board(), notes="Built from 7 submissions, 2 rejected."), encoding="utf-8")
    browser.get(page.as_uri())
    assert browser.execute_script("return document.readyState") == "complete"

    # nothing but the page itself was requested: no network, no favicon
    requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
    assert urls and all(u.startswith(("file:", "data:")) for u in urls), urls

    # the hostile submission is text, and nothing of it ran
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    assert browser.execute_script("return window.__xss") is None
    assert XSS_NAME in _names(browser, "model")
    assert XSS_IMG in browser.find_element(By.ID, "rejected").text

    # sorting: best first on the first click, reversed on the second, NaN last either way
    initial = ["raw", "filter", "reflect", "ref:oracle", "ref:refuser"]
    assert _names(browser, "intervention") == initial
    utility = _header(browser, "intervention", "utility")
    utility.click()
    assert _names(browser, "intervention") == ["ref:oracle", "raw", "filter", "reflect", "ref:refuser"]
    assert utility.get_attribute("aria-sort") == "descending"
    utility.click()
    assert _names(browser, "intervention") == ["ref:refuser", "reflect", "filter", "raw", "ref:oracle"]
    assert utility.get_attribute("aria-sort") == "ascending"
    compose = _header(browser, "intervention", "compose_acc/held_out")
    compose.click()
    assert _names(browser, "intervention") == ["ref:oracle", "raw", "filter", "ref:refuser", "reflect"]
    compose.click()
    assert _names(browser, "intervention") == ["ref:refuser", "filter", "raw", "ref:oracle", "reflect"]
    _header(browser, "intervention", "name").click()
    assert _names(browser, "intervention") == ["filter", "raw", "ref:oracle", "ref:refuser", "reflect"]
    assert _names(browser, "model") == ["acme-1b", XSS_NAME, "ref:oracle", "ref:refuser"]  # the other table stays
    _header(browser, "model", "unsafe_action_rate/held_out").click()
    assert _names(browser, "model") == ["ref:oracle", "ref:refuser", "acme-1b", XSS_NAME]

    # the Pareto plot is loaded and not blank
    plot = browser.find_element(By.ID, "pareto")
    browser.execute_script("arguments[0].scrollIntoView()", plot)
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", plot) > 300
    shot = Image.open(io.BytesIO(plot.screenshot_as_png)).convert("L")
    low, high = shot.getextrema()
    assert shot.width > 300 and high - low > 100 and len(np.unique(np.asarray(shot))) > 20

    # the rejected submission's reason is on the page
    assert FORGERY_REASON in browser.find_element(By.ID, "rejected").text

    # a screenshot of the whole page, back in its first order
    browser.get(page.as_uri())
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(height + 140, 6000))
    out = Path(os.environ.get("MSW_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(out / "leaderboard_screenshot.png"))

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
