"""`xmcore serve`'s /explain (why a gallery picture matches a text, as JSON and as PNG) and the page's "why?" button."""

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from test_serve import _serve, browser, lines  # noqa: F401 -- browser is a fixture

ITEM = "image-3"


@pytest.fixture(scope="module")
def client(gallery_index, plugins):
    from fastapi.testclient import TestClient

    from xmcore.index import SearchIndex
    from xmcore.search.server import create_app

    return TestClient(create_app(SearchIndex(gallery_index, plugins), plugins))


@pytest.fixture(scope="module")
def texts(gallery_index):
    """The caption of ITEM, and a caption of another picture."""
    captions = lines(gallery_index / "metadata" / "text.jsonl")
    own = next(c["caption"] for c in captions if c["belongs_to"] == ITEM)
    other = next(c["caption"] for c in captions if c["belongs_to"] != ITEM and c["caption"] != own)
    return own, other


def explained(client, text, headers=None, **params):
    response = client.get("/explain", params={"item": ITEM, "text": text, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return response


def test_json_gives_the_score_the_map_and_the_words(client, gallery_index, texts):
    text = texts[0]
    body = explained(client, text).json()
    picture = Image.open(gallery_index / "media" / f"{ITEM}.png")
    assert body["item"] == ITEM and body["text"] == text and body["method"] == "gradcam"
    found = client.get("/search", params={"text": text, "k": 100}).json()["results"]
    assert body["score"] == pytest.approx(next(r["score"] for r in found if r["id"] == ITEM), abs=1e-4)  # the index's model
    values = np.array(body["map"]["values"])
    assert list(values.shape) == body["map"]["shape"] and max(values.shape) <= 64
    assert body["map"]["size"] == [picture.height, picture.width] and values.std() > 0
    words = body["words"]
    assert [w["word"] for w in words] == text.split() and body["words_by"] == "integrated-gradients"
    assert all(text[w["start"]:w["end"]] == w["word"] for w in words)
    assert any(abs(w["attribution"]) > 0 for w in words) and body["notes"] == []
    grid = body["map"]["details"]["grid"]  # Grad-CAM's [rows, columns]: a JSON list, not the text "[8, 8]"
    assert isinstance(grid, list) and len(grid) == 2 and all(type(n) is int and n > 0 for n in grid), grid


def test_the_map_and_the_words_follow_the_text(client, texts):
    own, other = (explained(client, t).json() for t in texts)
    maps = np.array(own["map"]["values"]), np.array(other["map"]["values"])
    assert np.abs(maps[0] - maps[1]).max() > 1e-3 * max(np.abs(maps[0]).max(), np.abs(maps[1]).max())
    assert own["score"] != pytest.approx(other["score"], abs=1e-4)


def test_png_is_the_picture_under_its_heatmap(client, gallery_index, texts):
    picture = Image.open(gallery_index / "media" / f"{ITEM}.png").convert("RGB")
    response = explained(client, texts[0], format="png")
    assert response.headers["content-type"] == "image/png"
    drawn = Image.open(io.BytesIO(response.content)).convert("RGB")
    scale = drawn.width // picture.width  # a whole factor, the proportions kept, at least 256 pixels a side
    assert drawn.size == (picture.width * scale, picture.height * scale) and min(drawn.size) >= 256
    plain = np.asarray(picture.resize(drawn.size, Image.NEAREST), dtype=float)
    assert np.abs(np.asarray(drawn, dtype=float) - plain).mean() > 10  # a heatmap covers it
    other = np.asarray(Image.open(io.BytesIO(explained(client, texts[1], format="png").content)).convert("RGB"), dtype=float)
    assert np.abs(np.asarray(drawn, dtype=float) - other).mean() > 1  # another text, another picture


def test_the_accept_header_chooses_when_format_is_not_given(client, texts):
    as_img = explained(client, texts[0], headers={"Accept": "image/avif,image/webp,image/*,*/*;q=0.8"})
    assert as_img.headers["content-type"] == "image/png"
    assert explained(client, texts[0], headers={"Accept": "*/*"}).headers["content-type"] == "application/json"
    assert explained(client, texts[0], format="json", headers={"Accept": "image/png"}).json()["item"] == ITEM


@pytest.mark.parametrize("method", ["occlusion", "integrated-gradients"])
def test_another_method_by_name(client, texts, method):
    body = explained(client, texts[0], method=method).json()
    assert body["method"] == method and np.array(body["map"]["values"]).std() > 0


@pytest.mark.parametrize("params,status,fragments", [
    ({"item": "image-99999", "text": "a red circle"}, 404, ["no item 'image-99999'"]),
    ({"item": ITEM, "text": "   "}, 422, ["text", "empty"]),
    ({"item": ITEM, "text": ""}, 422, ["text"]),
    ({"item": ITEM}, 422, ["text"]),
    ({"text": "a red circle"}, 422, ["item"]),
    ({"item": ITEM, "text": "a red circle", "method": "gradcm"}, 422, ["'gradcm'", "did you mean 'gradcam'", "occlusion"]),
    ({"item": ITEM, "text": "a red circle", "format": "gif"}, 422, ["format", "json or png"]),
    ({"item": "text-0", "text": "a red circle"}, 422, ["'text-0' is of the text modality", "explains here: image"]),
    ({"item": "../manifest.json", "text": "a red circle"}, 404, ["no item"]),
])
def test_bad_requests_get_a_4xx_that_says_why(client, params, status, fragments):
    response = client.get("/explain", params=params)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and all(f in detail for f in fragments), detail


def test_without_an_explainer_for_pictures_the_answer_says_so(gallery_index, plugins, monkeypatch):
    from fastapi.testclient import TestClient

    from xmcore.index import SearchIndex
    from xmcore.plugins import load_plugins
    from xmcore.search.server import create_app

    monkeypatch.setenv("XMCORE_DISABLE_PLUGINS", "xmcore-explain")
    client = TestClient(create_app(SearchIndex(gallery_index, plugins), load_plugins()))
    response = client.get("/explain", params={"item": ITEM, "text": "a red circle"})
    assert response.status_code == 422 and response.json()["detail"] == (
        f"item '{ITEM}' is of the image modality, and no installed explainer maps image items against a text; the "
        "modalities /explain explains here: none (install an explainer plugin, e.g. xmcore-explain)")


def test_an_explanation_leaves_the_server_free(gallery_index, plugins, monkeypatch, texts):
    """/explain runs in the threadpool, and its model is its own: /health and /search answer while it runs."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from xmcore.search import server as serve
    from xmcore.index import SearchIndex

    running = serve.Explainers.run

    def slow(self, *args):
        time.sleep(2)
        return running(self, *args)

    monkeypatch.setattr(serve.Explainers, "run", slow)
    with TestClient(serve.create_app(SearchIndex(gallery_index, plugins), plugins)) as client, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.get, "/explain", params={"item": ITEM, "text": texts[1]})
        time.sleep(0.5)
        started = time.perf_counter()
        assert client.get("/health").status_code == 200 and client.get("/search", params={"text": texts[1]}).status_code == 200
        assert time.perf_counter() - started < 1 and not pending.done()
        assert pending.result().status_code == 200


def test_an_index_whose_stored_model_or_item_file_is_gone_says_so(gallery_index, plugins, tmp_path, texts):
    from fastapi.testclient import TestClient

    from xmcore.index import SearchIndex
    from xmcore.search.server import create_app

    copy = shutil.copytree(gallery_index, tmp_path / "idx")
    client = TestClient(create_app(SearchIndex(copy, plugins), plugins))
    (copy / "media" / "image-4.png").write_bytes((copy / "media" / "image-5.png").read_bytes())  # swapped by hand
    swapped = client.get("/explain", params={"item": "image-4", "text": texts[0]})
    assert swapped.status_code == 409 and "item 'image-4': the index keeps no intact file of it" in swapped.json()["detail"]
    (copy / "model" / "weights.pt").unlink()  # after the server opened it
    response = client.get("/explain", params={"item": ITEM, "text": texts[0]})
    assert response.status_code == 409 and "no model to explain with" in response.json()["detail"]
    assert "weights.pt" in response.json()["detail"] and str(tmp_path) not in response.text
    assert client.get("/search", params={"text": texts[0]}).status_code == 200  # searching goes on


def test_the_openapi_schema_documents_explain(client):
    operation = client.get("/openapi.json").json()["paths"]["/explain"]["get"]
    assert set(operation["responses"]["200"]["content"]) == {"application/json", "image/png"}
    assert {"404", "409", "422"} <= set(operation["responses"])
    assert operation["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/Detail")
    assert {p["name"] for p in operation["parameters"]} == {"item", "text", "method", "format"}
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    details = schemas["ExplainedMap"]["properties"]["details"]["additionalProperties"]
    assert details == {"$ref": "#/components/schemas/DetailValue"}  # a value may be a list (a grid's [8, 8])
    assert {"items": {"$ref": "#/components/schemas/DetailValue"}, "type": "array"} in schemas["DetailValue"]["anyOf"]


@pytest.mark.parametrize("size,drawn", [((2000, 1500), (1024, 768)), ((40, 30), (360, 270)), ((300, 300), (300, 300))])
def test_the_png_keeps_the_proportions_within_256_to_1024_pixels(size, drawn):
    from xmcore.explain import Explanation
    from xmcore.explain.outputs import heatmap_png

    values = np.zeros(size[::-1], dtype=np.float32)
    values[: size[1] // 2, : size[0] // 2] = 1  # the top left quarter raises the score
    png = Image.open(io.BytesIO(heatmap_png(Image.new("RGB", size, (200, 200, 200)), Explanation("image", 0.5, values, method="m"))))
    assert png.size == drawn
    tint = np.abs(np.asarray(png.convert("RGB"), dtype=float) - 200).sum(-1)  # how far from the plain picture
    assert tint[drawn[1] // 8, drawn[0] // 8] > tint[drawn[1] // 2 + drawn[1] // 8, drawn[0] // 2 + drawn[0] // 8] + 100


def test_a_map_over_a_canvas_is_drawn_as_a_figure():
    from xmcore.explain import Canvas, Explanation
    from xmcore.explain.outputs import canvas_png

    values = np.random.default_rng(0).random((8, 20)).astype(np.float32)
    explanation = Explanation("sound", 0.5, values, method="occlusion", canvas=Canvas(values, (0, 2, 0, 4), "s", "kHz"))
    assert Image.open(io.BytesIO(canvas_png(None, explanation))).size[0] > 300


@pytest.fixture(scope="module")
def server(gallery_index):
    yield from _serve(gallery_index)


def test_why_on_the_search_page_in_a_real_browser(server, browser, texts):  # noqa: F811 -- browser: the fixture
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(server + "/")
    browser.find_element(By.ID, "query").send_keys(texts[0])
    browser.find_element(By.ID, "search-button").click()
    wait.until(lambda d: d.execute_script("return document.querySelectorAll('#results .card button.why').length > 0"))
    assert browser.execute_script("return document.querySelectorAll('#results .card .heat').length") == 0
    button = browser.find_element(By.CSS_SELECTOR, "#results .card button.why")
    button.click()
    card = "arguments[0].closest('.card')"
    wait.until(lambda d: d.execute_script(
        f"const h = {card}.querySelector('img.heat'); return h !== null && h.complete && h.naturalWidth > 0", button))
    picture, heat = browser.execute_script(
        f"const c = {card}; const p = c.querySelector('.frame img:not(.heat)'), h = c.querySelector('img.heat');"
        "return [[p.naturalWidth, p.naturalHeight], [h.naturalWidth, h.naturalHeight]]", button)
    assert heat[0] * picture[1] == heat[1] * picture[0] and heat[0] >= 256  # over the picture, its proportions kept
    words = browser.execute_script(f"return [...{card}.querySelectorAll('.why-words span.word')]"
                                   ".map(s => [s.textContent, getComputedStyle(s).backgroundColor])", button)
    assert [w for w, _ in words] == texts[0].split()
    assert any(not colour.endswith(", 0)") and colour != "rgba(0, 0, 0, 0)" for _, colour in words), words
    button.click()  # off again
    assert browser.execute_script(f"return {card}.querySelectorAll('.heat, .why-words').length", button) == 0


def test_a_sound_is_explained_on_what_its_encoder_read(audio_index, plugins):
    """A gallery of clips: the map lies on the clip's spectrogram (JSON says where), the PNG is that figure,
    and the page offers "why?" for sound results."""
    from fastapi.testclient import TestClient

    from xmcore.index import SearchIndex
    from xmcore.search.server import create_app

    client = TestClient(create_app(SearchIndex(audio_index, plugins), plugins))
    params = {"item": "audio-3", "text": lines(audio_index / "metadata" / "text.jsonl")[0]["caption"]}
    body = client.get("/explain", params=params).json()
    assert body["modality"] == "audio" and body["method"] == "occlusion" and body["words"]
    assert body["map"]["axes"]["xlabel"] and np.array(body["map"]["values"]).std() > 0
    figure = client.get("/explain", params={**params, "format": "png"})
    assert figure.status_code == 200 and Image.open(io.BytesIO(figure.content)).size[0] > 300
    assert 'const explainable = ["audio"];' in client.get("/").text
