"""Draw docs/search-page.png: `xmcore serve INDEX_DIR` in headless Chromium after a text query.

    xmcore run recipes/quickstart.yaml --out runs/shapes
    xmcore index runs/shapes --out indexes/shapes --split test
    python docs/make_screenshot.py indexes/shapes "a red circle left of a blue square"

Needs Debian's chromium and chromium-driver, and selenium (requirements-dev.txt).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from xmcore.testing import free_port


def main(index_dir: str, query: str, out: str = str(Path(__file__).with_name("search-page.png"))) -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "xmcore", "serve", index_dir, "--port", str(port)])
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "health", timeout=1)
                break
            except OSError:
                time.sleep(0.3)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        with tempfile.TemporaryDirectory() as profile:
            for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1100,760",
                        f"--user-data-dir={profile}"):
                options.add_argument(arg)
            driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
            try:
                driver.get(url)
                driver.find_element(By.ID, "query").send_keys(query)
                driver.find_element(By.ID, "search-button").click()
                WebDriverWait(driver, 30).until(lambda d: d.execute_script(
                    "const i = [...document.querySelectorAll('#results img')];"
                    "return i.length > 0 && i.every(x => x.complete && x.naturalWidth > 0)"))
                driver.save_screenshot(out)
            finally:
                driver.quit()
    finally:
        server.terminate()
        server.wait()
    print(f"written: {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
