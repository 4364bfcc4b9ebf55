"""Draw docs/search-page.png: `xmcore serve INDEX_DIR` in headless Chromium after a text query.

    xmcore run recipes/quickstart.yaml --out runs/shapes
    xmcore index runs/shapes --out indexes/shapes --split test
    python docs/make_screenshot.py indexes/shapes "a blue triangle to the left of a purple square"

The picture should show what the product does: the query is one of the gallery's own captions, and
the script refuses to write the picture unless the image that caption describes comes first.

Needs Debian's chromium and chromium-driver, and selenium (requirements-dev.txt).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.parse
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
                right_answer = _check_query(url, Path(index_dir), query)
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
    print(f"written: {out} (the first result is {right_answer}, the image the query describes)")


def _check_query(url: str, index_dir: Path, query: str) -> str:
    """The id of the image the query (a gallery caption) belongs to; exits if it is not the first result."""
    captions = [json.loads(line) for line in (index_dir / "metadata" / "text.jsonl").read_text().splitlines()]
    owners = {c["belongs_to"] for c in captions if c.get("caption") == query and c.get("belongs_to")}
    if not owners:
        sys.exit(f"'{query}' is not a caption of the gallery: choose one whose image is in it")
    params = urllib.parse.urlencode({"text": query, "k": 1, "target": "image"})
    with urllib.request.urlopen(f"{url}search?{params}", timeout=60) as response:
        first = json.load(response)["results"][0]["id"]
    if first not in owners:
        sys.exit(f"the first result for '{query}' is {first}, not its image ({', '.join(sorted(owners))}): choose another query")
    return first


if __name__ == "__main__":
    main(*sys.argv[1:])
