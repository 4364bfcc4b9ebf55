"""`xmcore serve`: the HTTP API (bounds, no path traversal) and the web page in a real headless Chromium."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from xmcore.testing import free_port, offline_env

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def client(gallery_index, plugins):
    from fastapi.testclient import TestClient

    from xmcore.index import SearchIndex
    from xmcore.search.server import create_app

    return TestClient(create_app(SearchIndex(gallery_index, plugins)))


def png_bytes(path):
    return Path(path).read_bytes()


def test_health_and_text_search(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["modalities"]["image"]["index"] == "flat"
    body = client.get("/search", params={"text": "a red square above a blue circle", "k": 3}).json()
    assert [r["rank"] for r in body["results"]] == [1, 2, 3]
    assert all(r["id"].startswith("image-") and r["media_url"] == f"/items/{r['id']}/media" for r in body["results"])
    assert body["query"]["target"] == "image"


def test_image_upload_finds_itself(client, gallery_index):
    upload = {"image": ("query.png", png_bytes(gallery_index / "media" / "image-5.png"), "image/png")}
    body = client.post("/search", files=upload, data={"k": "2", "target": "image"}).json()
    assert body["results"][0]["id"] == "image-5" and body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_items_and_their_images(client):
    item = client.get("/items/text-0").json()
    assert item["caption"] and item["belongs_to"] == "image-0"
    media = client.get("/items/image-0/media")
    assert media.status_code == 200 and media.headers["content-type"] == "image/png" and media.content[:4] == b"\x89PNG"


@pytest.mark.parametrize("path", ["/items/image-999999", "/items/../../etc/passwd", "/items/image-0%2F..%2F..%2Fmanifest.json/media",
                                  "/items/..%2F..%2Fetc%2Fpasswd/media", "/items/text-0/media", "/items/%2Fetc%2Fpasswd/media"])
def test_nothing_is_served_that_the_index_does_not_list(client, path):
    response = client.get(path)
    assert response.status_code == 404 and b"root:" not in response.content


def test_only_listed_and_intact_files_are_served(gallery_index, plugins, tmp_path):
    from fastapi.testclient import TestClient

    from xmcore.index import SearchIndex
    from xmcore.search.server import create_app

    copy = tmp_path / "idx"
    shutil.copytree(gallery_index, copy)
    index = SearchIndex(copy, plugins)
    client = TestClient(create_app(index))
    assert client.get("/items/image-1/media").status_code == 200
    index.by_id["image-1"]["media"] = "../manifest.json"  # as if the metadata pointed outside media/
    index.by_id["image-2"] = {**index.by_id["image-2"], "path": "/etc/passwd"}
    index.by_id["image-2"].pop("media")
    (copy / "media" / "image-3.png").write_bytes((copy / "media" / "image-4.png").read_bytes())  # swapped by hand
    for item in ("image-1", "image-2", "image-3"):
        response = client.get(f"/items/{item}/media")
        assert response.status_code == 404 and b"root:" not in response.content and b"format" not in response.content
    assert "/etc" not in client.get("/items/image-2").text  # a file name at most, never a server path


@pytest.mark.parametrize("params,fragment", [
    ({"text": "x", "k": 0}, "k"),
    ({"text": "x", "k": 101}, "k"),
    ({"text": "x" * 1001}, "text"),
    ({"text": "   "}, "empty"),
    ({"text": "x", "target": "audio"}, "target"),
    ({}, "text"),
])
def test_bad_text_queries_get_a_4xx_that_says_why(client, params, fragment):
    response = client.get("/search", params=params)
    assert response.status_code == 422 and fragment in json.dumps(response.json()["detail"])


def test_bad_uploads_get_a_4xx_and_the_server_stays_up(client):
    from xmcore.search.server import MAX_UPLOAD_BYTES

    not_image = client.post("/search", files={"image": ("a.png", b"this is not a picture", "image/png")})
    assert not_image.status_code == 422 and "not a readable image" in not_image.json()["detail"]
    empty = client.post("/search", files={"image": ("a.png", b"", "image/png")})
    assert empty.status_code == 422
    huge = client.post("/search", files={"image": ("a.png", b"\0" * (MAX_UPLOAD_BYTES + 1), "image/png")})
    assert huge.status_code == 413
    assert client.post("/search").status_code == 422  # no file at all
    assert client.get("/health").status_code == 200


def test_a_picture_over_50_megapixels_is_refused_though_its_file_is_small(client):
    import io

    from PIL import Image

    from xmcore.search.server import MAX_UPLOAD_BYTES

    picture = Image.new("P", (8000, 7000), 0)  # 56 megapixels of one colour
    picture.putpalette([220, 30, 30])
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    assert len(buffer.getvalue()) < MAX_UPLOAD_BYTES // 50  # the upload limit is not what refuses it
    response = client.post("/search", files={"image": ("big.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 413 and "50 megapixels" in response.json()["detail"]
    assert client.get("/health").status_code == 200


def test_post_search_takes_k_and_target_from_the_form_or_the_query_string(client, gallery_index):
    picture = png_bytes(gallery_index / "media" / "image-5.png")
    in_query = client.post("/search?k=2&target=text", files={"image": ("q.png", picture, "image/png")}).json()
    assert len(in_query["results"]) == 2 and in_query["query"] == {"modality": "image", "k": 2, "target": "text"}
    assert all(r["id"].startswith("text-") for r in in_query["results"])
    in_form = client.post("/search", files={"image": ("q.png", picture, "image/png")}, data={"k": "3", "target": "image"}).json()
    assert len(in_form["results"]) == 3 and in_form["query"]["target"] == "image" and in_form["results"][0]["id"] == "image-5"
    both = client.post("/search?k=4", files={"image": ("q.png", picture, "image/png")}, data={"k": "4"})
    assert both.status_code == 200 and len(both.json()["results"]) == 4
    clash = client.post("/search?k=2", files={"image": ("q.png", picture, "image/png")}, data={"k": "5"})
    assert clash.status_code == 422 and "k: given twice" in clash.json()["detail"]
    too_many = client.post("/search?k=500", files={"image": ("q.png", picture, "image/png")})
    assert too_many.status_code == 422 and "k: expected a whole number from 1 to 100" in too_many.json()["detail"]


@pytest.mark.parametrize("method,url,kwargs", [
    ("get", "/search", {"params": {"text": "x", "k": 0}}),
    ("get", "/search", {"params": {"text": "x", "k": "many"}}),
    ("get", "/search", {"params": {"text": "x" * 1001}}),
    ("get", "/search", {"params": {"text": "x", "target": "y" * 41}}),
    ("get", "/search", {"params": {"text": "x", "target": "audio"}}),
    ("get", "/search", {"params": {}}),
    ("post", "/search", {}),
    ("post", "/search?k=zzzzzzzzzzzz", {"files": {"image": ("q.png", b"x", "image/png")}}),
])
def test_every_error_is_one_line_of_text_that_does_not_echo_the_input(client, method, url, kwargs):
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == 422
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and "\n" not in body["detail"], body
    assert len(response.content) < 300 and "xxxxxxxxxx" not in response.text and "zzzzzzzz" not in response.text
    assert "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy" not in response.text


def test_a_query_the_model_cannot_read_comes_with_a_warning(client):
    unreadable = client.get("/search", params={"text": "\U0001f600" * 1000, "k": 3}).json()
    assert len(unreadable["results"]) == 3 and unreadable["warnings"]
    assert "no words the text model can read" in unreadable["warnings"][0]
    mostly_unknown = client.get("/search", params={"text": "a zorblax quuxified flibbertigibbet"}).json()
    assert "3 of the query's 4 words are unknown" in mostly_unknown["warnings"][0]
    assert client.get("/search", params={"text": "a red circle left of a blue square"}).json()["warnings"] == []


def test_serve_on_a_taken_port_says_so_and_serves_nothing(gallery_index, capfd):
    import socket

    from xmcore.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", str(gallery_index), "--port", str(port)])
    out, err = capfd.readouterr()
    assert code == 2 and "serving" not in out and "Traceback" not in err
    # the last line: a warning another part of the process prints on stderr (it flaked twice) is not this test's subject
    assert err.strip().splitlines()[-1] == f"error: --port {port}: 127.0.0.1:{port} is already in use (another server?); choose another --port"



@pytest.fixture(scope="module")
def audio_client(audio_index, plugins):
    from fastapi.testclient import TestClient

    from xmcore.index import SearchIndex
    from xmcore.search.server import create_app

    return TestClient(create_app(SearchIndex(audio_index, plugins)))


def wav_bytes(seconds, rate=8000, fmt="WAV"):
    import io

    import numpy as np
    import soundfile

    buffer = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(buffer, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def test_an_audio_upload_finds_its_clip_and_clips_are_served_as_sound(audio_client, audio_index):
    health = audio_client.get("/health").json()
    assert health["query_files"] == ["audio"] and "sample_rate=8000" in health["preprocessing"]["audio"]
    clip = (audio_index / "media" / "audio-3.wav").read_bytes()
    body = audio_client.post("/search", files={"audio": ("q.wav", clip, "audio/wav")}, data={"k": "2", "target": "audio"}).json()
    first = body["results"][0]
    assert body["query"] == {"modality": "audio", "k": 2, "target": "audio"}
    assert first["id"] == "audio-3" and first["score"] == pytest.approx(1.0, abs=2e-3)
    assert first["media_type"] == "audio/x-wav" and first["media_url"] == "/items/audio-3/media"
    captions = audio_client.post("/search?k=3", files={"audio": ("q.wav", clip, "audio/wav")}).json()["results"]
    assert len(captions) == 3 and all(r["id"].startswith("text-") and "media_url" not in r for r in captions)
    media = audio_client.get(first["media_url"])
    assert media.status_code == 200 and media.headers["content-type"] == "audio/x-wav" and media.content == clip
    assert media.headers["x-content-type-options"] == "nosniff"
    # the page's example upload takes sound files, and only the modalities the index reads from files
    page = audio_client.get("/").text
    assert '[{"modality": "audio", "accept": "audio/*"}]' in page


def test_bad_audio_uploads_get_a_4xx_that_says_why(audio_client):
    too_long = audio_client.post("/search", files={"audio": ("long.wav", wav_bytes(121), "audio/wav")})
    assert too_long.status_code == 413 and too_long.json()["detail"] == (
        "audio: longer than 120 s (121.0 s); search with a shorter excerpt")
    not_wav = audio_client.post("/search", files={"audio": ("a.wav", b"this is not a sound" * 10, "audio/wav")})
    assert not_wav.status_code == 422 and not_wav.json()["detail"].startswith("audio: not a readable sound file")
    empty = audio_client.post("/search", files={"audio": ("a.wav", b"", "audio/wav")})
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]
    picture = audio_client.post("/search", files={"image": ("a.png", b"\x89PNG", "image/png")})
    assert picture.status_code == 422 and picture.json()["detail"].endswith("named by its modality: audio")
    two = audio_client.post("/search", files=[("audio", ("a.wav", wav_bytes(1), "audio/wav")),
                                              ("audio", ("b.wav", wav_bytes(1), "audio/wav"))])
    assert two.status_code == 422 and "one query file" in two.json()["detail"]
    flac = audio_client.post("/search", files={"audio": ("a.flac", wav_bytes(1, 16000, "FLAC"), "audio/flac")})
    assert flac.status_code == 200 and len(flac.json()["results"]) == 10  # another format and rate: read and resampled
    assert audio_client.get("/health").status_code == 200


def _serve(index_dir, *options):
    """`xmcore serve INDEX_DIR [OPTIONS]` in a real subprocess on a free port of 127.0.0.1; yields its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "xmcore", "serve", str(index_dir), "--port", str(port), *options],
                            env=offline_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"xmcore serve did not start: {proc.communicate()[1][-3000:]}")
        time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(gallery_index):
    yield from _serve(gallery_index)


@pytest.fixture(scope="module")
def audio_server(audio_index):
    yield from _serve(audio_index)


def test_the_served_api_over_real_http(server):
    query = urllib.parse.urlencode({"text": "a blue circle", "k": 2})
    with urllib.request.urlopen(f"{server}/search?{query}") as r:
        assert len(json.load(r)["results"]) == 2
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(f"{server}/search?text=x&k=5000")
    assert bad.value.code == 422


def test_serve_binds_to_this_machine_only_by_default():
    from xmcore.cli import _parser

    assert _parser().parse_args(["serve", "idx"]).host == "127.0.0.1"


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        reason = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)"
        if os.environ.get("XMCORE_REQUIRE_BROWSER") == "1":  # CI sets it: there, a missing browser fails the suite
            pytest.fail(f"XMCORE_REQUIRE_BROWSER=1: the browser test {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def test_search_page_in_a_real_browser(server, browser, gallery_index, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    captions = lines(gallery_index / "metadata" / "text.jsonl")
    wait = WebDriverWait(browser, 30)
    browser.get(server + "/")
    assert browser.title == "xmcore search"

    def first_card():  # read in one script: the grid is replaced while results arrive
        return browser.execute_script("const c = document.querySelector('#results .card'); return c && c.dataset.id")

    # words -> captions: an exact caption comes first
    Select(browser.find_element(By.ID, "target")).select_by_value("text")
    box = browser.find_element(By.ID, "query")
    box.send_keys(captions[7]["caption"])
    browser.find_element(By.ID, "search-button").click()
    wait.until(lambda _: first_card() == "text-7")
    assert captions[7]["caption"] == browser.execute_script(
        "return document.querySelector('#results .card .caption').textContent")

    # words -> images: a grid of thumbnails that loaded
    Select(browser.find_element(By.ID, "target")).select_by_value("image")
    browser.find_element(By.ID, "search-button").click()
    wait.until(lambda _: (first_card() or "").startswith("image-"))
    wait.until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))

    # an uploaded picture -> the same picture first
    query = tmp_path / "query.png"
    shutil.copy(gallery_index / "media" / "image-4.png", query)
    browser.find_element(By.ID, "file-image").send_keys(str(query))
    wait.until(lambda _: first_card() == "image-4")
    browser.save_screenshot(str(tmp_path / "page.png"))
    if os.environ.get("XMCORE_SCREENSHOT"):
        shutil.copy(tmp_path / "page.png", os.environ["XMCORE_SCREENSHOT"])
    assert (tmp_path / "page.png").stat().st_size > 1000


def test_search_page_plays_audio_results_in_a_real_browser(audio_server, browser, audio_index, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(audio_server + "/")
    upload = browser.find_element(By.ID, "file-audio")
    assert upload.get_attribute("accept") == "audio/*" and not browser.find_elements(By.ID, "file-image")

    # an uploaded clip -> the same clip first, shown as a player the browser loaded
    Select(browser.find_element(By.ID, "target")).select_by_value("audio")
    query = tmp_path / "query.wav"
    query.write_bytes((audio_index / "media" / "audio-6.wav").read_bytes())
    upload.send_keys(str(query))
    wait.until(lambda d: d.execute_script(
        "const c = document.querySelector('#results .card'); return c && c.dataset.id") == "audio-6")
    wait.until(lambda d: d.execute_script(
        "const a = [...document.querySelectorAll('#results audio')];"
        "return a.length > 0 && a.every(x => x.controls && x.readyState >= 1 && x.duration > 0)"))
    duration = browser.execute_script("return document.querySelector('#results .card audio').duration")
    assert duration == pytest.approx(soundfile_duration(audio_index / "media" / "audio-6.wav"), abs=0.01)
    assert not browser.find_elements(By.CSS_SELECTOR, "#results img")


def soundfile_duration(path):
    import soundfile

    return soundfile.info(str(path)).duration
