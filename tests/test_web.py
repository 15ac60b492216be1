"""End-to-end: the page in headless Chromium (Debian's chromium + chromium-driver) against a live server."""
import contextlib
import json
import os
import shutil
import socket
import threading
import time
import urllib.request

import pytest
import uvicorn

from quala.evaluate import TorchPredictor
from quala.modeling import load
from quala.serve import Engine, create_app, server_config
from tests.test_serve import CONTEXT, tiny_front


def browser():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are missing: .ci/run installs them")
        pytest.skip("chromium/chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1000,1200"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


# emoji (two UTF-16 units each, one code point) before the answer, and combining accents after it
EMOJI_CONTEXT = "🌊🌊🌊 The Amazon flows through Brazil, Peru and Colombia. e\u0301 Cafe\u0301 is here."


@contextlib.contextmanager
def live(engine):
    """The app on a free port, served as `quala serve` serves it (uvicorn in a thread); yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(server_config(create_app(engine), "127.0.0.1", port, engine.limits, "warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server_url(tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    with live(Engine(TorchPredictor(model), tokenizer, model.config, tiny_front())) as url:
        yield url


@pytest.fixture(scope="module")
def release_url(release_dir):
    """The shipped model (one that has learned SQuAD, so that its answer is a real one), without a front."""
    model, tokenizer = load(release_dir)
    with live(Engine(TorchPredictor(model), tokenizer, model.config, None)) as url:
        yield url


def test_page_answers_with_the_chosen_budget(server_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    driver = browser()
    try:
        driver.get(server_url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "accurate" in d.find_element(By.ID, "point").text)
        context = driver.find_element(By.ID, "context")
        context.clear()
        context.send_keys(CONTEXT)
        question = driver.find_element(By.ID, "question")
        question.clear()
        question.send_keys("Which countries does the river flow through?")
        slider = driver.find_element(By.ID, "budget")
        slider.send_keys(Keys.HOME)  # move to the fastest point
        assert "fastest (p0)" in driver.find_element(By.ID, "point").text
        driver.find_element(By.ID, "ask").click()
        wait.until(ec.visibility_of_element_located((By.ID, "result")))
        answer = driver.find_element(By.ID, "answer").text
        marked = driver.find_element(By.CSS_SELECTOR, "#shown mark").text
        assert marked == answer and answer.strip() and answer in CONTEXT
        assert "configuration p0" in driver.find_element(By.ID, "timing").text
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()


def test_page_highlights_in_code_points_and_enter_submits(release_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    question = "Which countries does the Amazon flow through?"
    request = urllib.request.Request(release_url + "/answer", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"question": question, "context": EMOJI_CONTEXT}).encode())
    with urllib.request.urlopen(request, timeout=30) as r:
        api = json.loads(r.read())
    assert api["answer"] == EMOJI_CONTEXT[api["start"]:api["end"]] and api["answer"].strip()
    assert api["start"] > 3  # after the emoji, where code points and UTF-16 units disagree
    driver = browser()
    try:
        driver.get(release_url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "full" in d.find_element(By.ID, "point").text)
        assert driver.find_element(By.ID, "output").get_attribute("aria-live") == "polite"
        assert driver.find_elements(By.CSS_SELECTOR, "#output #result")
        # ChromeDriver types characters of the Basic Multilingual Plane only: the emoji go in by script
        driver.execute_script("arguments[0].value = arguments[1]", driver.find_element(By.ID, "context"),
                              EMOJI_CONTEXT)
        assert driver.execute_script("return document.getElementById('context').value") == EMOJI_CONTEXT
        # record the button's states while the request is in flight
        driver.execute_script("""
            const b = document.getElementById("ask");
            window.buttonStates = [];
            new MutationObserver(() => window.buttonStates.push([b.disabled, b.textContent]))
                .observe(b, {attributes: true, childList: true, characterData: true, subtree: true});""")
        field = driver.find_element(By.ID, "question")
        field.clear()
        field.send_keys(question)
        field.send_keys(Keys.ENTER)  # no click: Enter in the question field submits
        wait.until(ec.visibility_of_element_located((By.ID, "result")))
        wait.until(lambda d: d.find_element(By.ID, "ask").is_enabled())
        text = lambda selector: driver.find_element(By.CSS_SELECTOR, selector).get_property("textContent")  # noqa: E731
        assert text("#answer") == api["answer"]
        assert text("#shown mark") == api["answer"]  # the highlighted text is the answer, not 3 units off
        assert text("#shown") == EMOJI_CONTEXT  # and the whole context is shown around it, nothing lost
        assert [True, "answering…"] in driver.execute_script("return window.buttonStates")
        assert text("#ask") == "Answer" and text("#error") == ""
    finally:
        driver.quit()
