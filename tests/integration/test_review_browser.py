"""A reviewer at the keyboard, in a real headless Chromium (Debian ``chromium`` + ``chromium-driver``, via
Selenium), against the real server: 20 samples reviewed with accept, rejects with reasons, candidate picks,
a skip and an undo; the SQLite rows checked; the decisions exported and built into a version that obeys them."""
from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3

import pytest
import webdataset

from jobs import build as build_job
from jobs import review as review_job
from pipeline.testing import write_candidate_set
from review.store import REJECT_REASONS
from schemas.sample import Field
from tests.integration.test_review_server import EVIL_LABEL, Server, login, relabel

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")

REASON_OF_KEY = {key: code for code, (key, _) in REJECT_REASONS.items()}
#: What the reviewer types, one sample per key; "u" undoes the decision before it (that sample is shown
#: again and decided anew by the next key), " " skips.
TYPED = ["a", "o", "2", "a", "s", "3", "h", " ", "w", "1", "l", "x", "u", "o", "a", "4", "a", "s", "2", "a", "w", "a", "3"]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_twenty_samples_by_keyboard_then_export_and_build(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    candidates = write_candidate_set(tmp_path / "candidates", 30, seed=11)
    db = tmp_path / "review.sqlite"
    server = Server(candidates, db)
    try:
        wait = WebDriverWait(browser, 15)
        browser.get(server.url)
        wait.until(lambda d: d.current_url.endswith("/login"))
        assert "token" not in browser.current_url
        browser.find_element(By.ID, "name").send_keys("ann" + Keys.ENTER)
        shown = lambda: browser.find_element(By.ID, "key").text  # noqa: E731
        wait.until(lambda d: shown())
        body = browser.find_element(By.TAG_NAME, "body")

        # The viewing keys: mask overlay, flicker between removal and source, synchronised zoom.
        overlay = browser.find_element(By.CSS_SELECTOR, "#source .overlay")
        assert not overlay.is_displayed()
        body.send_keys("m")
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#source .overlay").is_displayed())
        region = browser.find_element(By.CSS_SELECTOR, "#removal .overlay")
        assert not region.is_displayed()
        body.send_keys("r")
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#removal .overlay").is_displayed())
        body.send_keys("r")
        source = browser.find_element(By.CSS_SELECTOR, "#source .picture").get_attribute("src")
        body.send_keys("f")
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#removal .picture").get_attribute("src") == source)
        body.send_keys("f")
        body.send_keys("v")
        before = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#removal .before"))[0]
        assert before.get_attribute("src") == source and "inset(0px 50%" in before.value_of_css_property("clip-path")
        body.send_keys("]")
        wait.until(lambda d: "inset(0px 40%" in d.find_element(By.CSS_SELECTOR, "#removal .before")
                   .value_of_css_property("clip-path"))
        body.send_keys("v")
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#removal .before"))
        body.send_keys("+")
        zooms = [e.value_of_css_property("zoom") for e in browser.find_elements(By.CSS_SELECTOR, "#main .stack")]
        assert len(zooms) >= 2 and set(zooms) == {"2"}
        body.send_keys("0")

        expected: dict[str, tuple] = {}
        history: list[str] = []
        for typed in TYPED:
            key = shown()
            sample = json.loads(browser.execute_script(
                "return fetch('/api/sample/' + arguments[0]).then(r => r.text())", key))
            if typed == "u":
                undone = history.pop()
                del expected[undone]
                body.send_keys(typed)
                wait.until(lambda d: shown() == undone and "undone" in d.find_element(By.ID, "flash").text)
                continue
            body.send_keys(Keys.SPACE if typed == " " else typed)
            if typed == "a":
                expected[key] = ("accept", None, None)
            elif typed.isdigit():
                expected[key] = ("pick", sample["candidates"][int(typed) - 1]["index"], None)
            elif typed in REASON_OF_KEY:
                expected[key] = ("reject", None, REASON_OF_KEY[typed])
            history.append(key)
            wait.until(lambda d: shown() != key)
        assert len(expected) == 20 and len(history) == 21  # 20 decisions and one skip

        connection = sqlite3.connect(db)
        rows = connection.execute("SELECT sample_key, action, candidate, reason, reviewer, undone_at FROM decisions "
                                  "ORDER BY id").fetchall()
        connection.close()
        standing = {key: (action, candidate, reason) for key, action, candidate, reason, reviewer, undone in rows
                    if undone is None and action != "skip"}
        assert standing == expected
        assert len(rows) == 22 and sum(r[5] is not None for r in rows) == 1 and {r[4] for r in rows} == {"ann"}
        assert [r[1] for r in rows].count("skip") == 1

        browser.get(server.base + "/dashboard")
        rejects = sum(action == "reject" for action, _, _ in expected.values())
        reviewers = browser.find_element(By.ID, "reviewers").text
        assert f"ann {sum(a == 'accept' for a, _, _ in expected.values())} " \
               f"{sum(a == 'pick' for a, _, _ in expected.values())} {rejects}" in reviewers
    finally:
        server.stop()

    decisions = tmp_path / "decisions.jsonl"
    assert review_job.main(["export", "--db", str(db), "--output", str(decisions)]) == 0
    build_job.run([f"--candidates={candidates}", f"--output={tmp_path / 'datasets'}", "--name=demo", "--version=v1",
                   f"--decisions={decisions}"])
    version = tmp_path / "datasets" / "demo" / "v1"
    urls = [str(version / e["url"]) for e in json.loads((version / "shardindex.json").read_text())["shardlist"]]
    pairs = {s["__key__"]: json.loads(s[Field.JSON]) for s in webdataset.WebDataset(urls, shardshuffle=False)}
    for key, (action, candidate, reason) in expected.items():
        if action == "reject":
            assert key not in pairs
            continue
        assert pairs[key]["selected_by"] == "review" and pairs[key]["review"]["reviewer"] == "ann"
        if action == "pick":
            assert pairs[key]["candidate"]["index"] == candidate
    lineage = json.loads((version / "lineage.json").read_text())
    assert lineage["decisions"]["sha256"] == hashlib.sha256(decisions.read_bytes()).hexdigest()
    assert lineage["decisions"]["keys"] == 20

    # The built version is reviewable too: each pair with its insertion input, under its own version name.
    built = Server(version, tmp_path / "built.sqlite")
    try:
        client, _ = login(built, "ann")
        key = client.get("/api/next").json()["key"]
        view = client.get(f"/api/sample/{key}").json()
        assert view["kind"] == "pairs" and len(view["candidates"]) == 1
        pasted = next(p["url"] for p in view["panels"] if p["title"].startswith("insertion"))
        tar = {s["__key__"]: s for s in webdataset.WebDataset(urls, shardshuffle=False)}
        assert client.get(pasted).content == tar[key][Field.PASTED]
        assert "demo-v1@" in client.get("/dashboard").text
    finally:
        built.stop()


def test_labels_and_names_holding_markup_are_shown_as_text(browser, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    markup = '<img src=x onerror="window.pwned=1">'
    folder = write_candidate_set(tmp_path / "set", 4, seed=2)
    relabel(folder, [EVIL_LABEL, markup])
    server = Server(folder, tmp_path / "review.sqlite")
    try:
        wait = WebDriverWait(browser, 15)
        browser.delete_all_cookies()
        browser.get(server.url)
        wait.until(lambda d: d.current_url.endswith("/login"))
        browser.find_element(By.ID, "name").send_keys(markup + Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "key").text)
        labels = set()
        for _ in range(4):  # every object, each shown and accepted
            key = browser.find_element(By.ID, "key").text
            labels.add(browser.find_element(By.ID, "label").text)
            browser.find_element(By.TAG_NAME, "body").send_keys("a")
            wait.until(lambda d: d.find_element(By.ID, "key").text != key)
        assert labels == {EVIL_LABEL, markup}
        assert browser.find_element(By.ID, "done").is_displayed()
        assert browser.find_element(By.ID, "reviewer").text == markup
        browser.get(server.base + "/dashboard")
        assert markup in browser.find_element(By.ID, "reviewers").text
        assert EVIL_LABEL in browser.find_element(By.CLASS_NAME, "facets").text
        assert browser.execute_script("return window.pwned === undefined")
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text
    finally:
        server.stop()
