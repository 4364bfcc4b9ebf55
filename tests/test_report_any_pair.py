"""The report's retrieval gallery for any pair of modalities: items picture themselves (``draw(ax)``),
images are shown, strings are written."""

from types import SimpleNamespace

import numpy as np
from PIL import Image

from conftest import ROOT, cli
from xmcore.report import gallery
from xmcore.testing import TINY_TRAINER
from xmcore_audio.items import Clip

AUDIO_RECIPE = ROOT / "recipes" / "audio-quickstart.yaml"


def magma_pixels(png) -> int:
    """Pixels of the spectrograms' colour map (black, purple, red, orange, pale yellow): strongly coloured,
    unlike the black text, the grey frames and the grey test images on white, and never green, unlike the
    frames and titles of correct results."""
    r, g, b = np.moveaxis(np.asarray(Image.open(png).convert("RGB")).astype(int), 2, 0)
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    green = (g > r + 15) & (g > b + 15)
    return int(((spread > 60) & ~green).sum())


def test_an_audio_run_reports_a_gallery_of_spectrograms(tmp_path, capfd):
    out = tmp_path / "run"
    result = cli(capfd, "run", AUDIO_RECIPE, *TINY_TRAINER, "data.train=16", "data.val=4", "data.test=8",
                 "encoders.audio.n_mels=16", "eval.report=true", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "## Retrieval examples" in report and "](gallery.png)" in report
    picture = Image.open(out / "gallery.png")
    assert picture.format == "PNG"
    # 4 text queries x 5 spectrograms and 3 spectrogram queries: far more colour than captions alone give
    assert magma_pixels(out / "gallery.png") > 20_000, magma_pixels(out / "gallery.png")
    (out / "gallery.png").unlink()
    redraw = cli(capfd, "report", out)  # from the run's files and its regenerated clips
    assert redraw.returncode == 0, redraw.stderr[-3000:]
    assert magma_pixels(out / "gallery.png") > 20_000


def three_modalities(n=6, rate=8000):
    """A duck-typed split of three aligned modalities, one item each per owner: grey squares, captions, tones."""
    t = np.arange(int(0.5 * rate)) / rate
    items = {
        "image": [Image.new("RGB", (24, 24), (40 * i,) * 3) for i in range(n)],
        "text": [f"a square of grey level {40 * i}" for i in range(n)],
        "audio": [Clip(np.sin(2 * np.pi * (300 + 200 * i) * t), rate) for i in range(n)],
    }
    return SimpleNamespace(modalities=("image", "text", "audio"), items=items,
                           groups=lambda modality: np.arange(n))


def embeddings_for(split, dim=8):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((len(split.items["image"]), dim))
    noisy = {m: base + 0.1 * rng.standard_normal(base.shape) for m in split.modalities}
    return {m: (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32) for m, e in noisy.items()}


def test_gallery_takes_the_first_two_of_three_modalities_or_a_named_pair(tmp_path):
    split = three_modalities()
    embeddings = embeddings_for(split)
    assert gallery(split, embeddings, tmp_path / "first-two.png") == "first-two.png"
    assert magma_pixels(tmp_path / "first-two.png") < 500  # images and captions only: no spectrogram

    # either way round: 4 image queries with 5 clips each and 3 clip queries, or 4 clip queries and 3 x 5 clips
    for pair in (("audio", "image"), ("image", "audio")):
        name = "-".join(pair) + ".png"
        assert gallery(split, embeddings, tmp_path / name, pair=pair) == name
        assert magma_pixels(tmp_path / name) > 15 * 10_000, (pair, magma_pixels(tmp_path / name))

    missing = {m: e for m, e in embeddings.items() if m != "audio"}
    assert gallery(split, missing, tmp_path / "none.png", pair=("audio", "text")) is None
    assert not (tmp_path / "none.png").exists()


def test_projection_shows_every_modality_of_three(tmp_path):
    from xmcore.report import MODALITY_COLOURS, projection

    rng = np.random.default_rng(0)
    embeddings = {m: rng.standard_normal((300, 8)).astype(np.float32) + shift
                  for m, shift in (("image", 0.0), ("text", 3.0), ("audio", -3.0))}
    assert projection(embeddings, tmp_path / "projection.png") == "projection.png"
    rgb = np.asarray(Image.open(tmp_path / "projection.png").convert("RGB")).astype(int)
    for colour in MODALITY_COLOURS[:3]:
        solid = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        faded = (solid + 255) / 2  # alpha 0.5 on white
        assert (np.abs(rgb - faded).sum(axis=2) < 12).sum() > 50, colour
