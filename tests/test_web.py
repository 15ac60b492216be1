"""End-to-end: the page in headless Chromium (Debian's chromium + chromium-driver) against a live server."""
import os
import shutil
import socket
import threading
import time

import pytest
import uvicorn

from quala.evaluate import TorchPredictor
from quala.modeling import load
from quala.serve import Engine, create_app
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


@pytest.fixture(scope="module")
def server_url(tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    app = create_app(Engine(TorchPredictor(model), tokenizer, model.config, tiny_front()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


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
