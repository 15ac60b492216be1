"""Screenshot of the web page (docs/serve-page.png): a real server, headless Chromium, one question asked at a
budget two steps below the most accurate point.

    python scripts/screenshot.py [--model DIR] [--out docs/serve-page.png]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from benchmarks.load import start_server  # noqa: E402
from quala.config import default_model_dir  # noqa: E402
from tests.test_web import browser  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: the released model)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "serve-page.png")
    args = p.parse_args()
    proc, url = start_server(str(args.model or default_model_dir()), "auto")
    try:
        driver = browser()
        driver.get(url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "accurate" in d.find_element(By.ID, "point").text)
        for _ in range(2):
            driver.find_element(By.ID, "budget").send_keys(Keys.LEFT)
        driver.find_element(By.ID, "ask").click()
        wait.until(ec.visibility_of_element_located((By.ID, "result")))
        time.sleep(0.5)
        print("answer:", driver.find_element(By.ID, "answer").text, "|", driver.find_element(By.ID, "timing").text,
              "|", driver.find_element(By.ID, "point").text)
        driver.save_screenshot(str(args.out))
        driver.quit()
    finally:
        proc.terminate()
    print(f"screenshot  {args.out}")


if __name__ == "__main__":
    main()
