"""The report explains its gallery: heatmaps over the top results of a few queries (eval.explain)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, cli
from xmcore.explain import load_model, peak
from xmcore.report import EXPLAINED_QUERIES, EXPLAINED_RESULTS, _gallery_queries


def _maps(folder):
    with np.load(folder / "explained.npz") as stored:
        return {k: stored[k] for k in stored.files}


@pytest.fixture(scope="module")
def explained_run(tmp_path_factory, plugins):
    """The quickstart trained for 40 steps on 640 pictures (about 15 s): enough that its maps point at shapes.
    eval.explain is left unset: on, as for any run whose pictures a CNN reads."""
    from xmcore.recipe import load_recipe, validate
    from xmcore.run import train_and_evaluate
    from xmcore.testing import tiny_overrides

    path = ROOT / "recipes" / "quickstart.yaml"
    small = ["eval.report=true", "data.train=640", "data.test=40", "data.image_size=64", "data.batch_size=32",
             "trainer.limit_train_batches=20", "trainer.max_epochs=2"]
    loaded = load_recipe(path, tiny_overrides(path, plugins) + small)
    out = tmp_path_factory.mktemp("explained") / "run"
    train_and_evaluate(validate(loaded, plugins), plugins, loaded.base_dir, out)
    return out


def test_a_runs_report_explains_the_top_results_of_its_gallerys_text_queries(explained_run, plugins):
    """explained.png is in report.md; explained.npz holds one map over each result's pixels for the gallery's own
    queries and their top results, with the pair's score as the real encoders give it."""
    from xmcore.embeddings import load_embeddings

    report = (explained_run / "report.md").read_text()
    assert "## Why these results?" in report and "![Why these results?](explained.png)" in report
    figure = Image.open(explained_run / "explained.png")
    assert figure.width > 600 and figure.height > 400
    stored = _maps(explained_run)
    assert str(stored["method"]) == "gradcam"
    emb = load_embeddings(explained_run / "embeddings.npz", what="test").embeddings
    assert list(stored["query"]) == list(_gallery_queries(emb, "image", "text")[0][:EXPLAINED_QUERIES])
    assert stored["results"].shape == stored["scores"].shape == (EXPLAINED_QUERIES, EXPLAINED_RESULTS)
    for row, query in enumerate(stored["query"]):  # the query's top results, in rank order
        order = np.argsort(-(emb["image"] @ emb["text"][query]), kind="stable")[:EXPLAINED_RESULTS]
        assert list(stored["results"][row]) == list(order)
    from xmcore.recipe import load_recipe, validate
    from xmcore.run import build_data

    recipe = validate(load_recipe(explained_run / "recipe.yaml"), plugins)
    split = build_data(recipe, ROOT / "recipes").splits["test"]
    model = load_model(explained_run, plugins)
    for row, n in ((0, 0), (2, 3)):
        query, picture = split.items["text"][stored["query"][row]], split.items["image"][stored["results"][row][n]]
        assert stored["scores"][row][n] == pytest.approx(model.score("image", picture, model.target("text", query)), abs=1e-4)


def test_the_report_maps_are_not_blank_and_point_at_shapes(explained_run, plugins):
    """Each map is over the picture's 64 x 64 pixels, not flat, its own; and its peak is on one of the picture's shapes
    (the shapes data know their boxes) for most results, where shapes cover about a tenth of a picture."""
    from xmcore.recipe import load_recipe, validate
    from xmcore.run import build_data

    stored = _maps(explained_run)
    maps = {(r, n): stored[f"map_{r}_{n}"] for r in range(EXPLAINED_QUERIES) for n in range(EXPLAINED_RESULTS)}
    assert all(m.shape == (64, 64) and np.isfinite(m).all() and m.max() > m.min() for m in maps.values())
    assert len({m.tobytes() for m in maps.values()}) == len(maps)  # each result's own map, not one map repeated
    recipe = validate(load_recipe(explained_run / "recipe.yaml"), plugins)
    objects = build_data(recipe, ROOT / "recipes").extras["objects"]["test"]
    on_a_shape = 0
    for (r, n), values in maps.items():
        x, y = peak(values)
        on_a_shape += any(x0 <= x <= x1 and y0 <= y <= y1 for x0, y0, x1, y1 in (o["box"] for o in objects[stored["results"][r][n]]))
    assert on_a_shape >= 8, on_a_shape  # 11 of 12 when written


def test_xmcore_report_draws_the_explained_results_again(explained_run, tmp_path, capfd):
    run = Path(shutil.copytree(explained_run, tmp_path / "run"))
    before = _maps(run)
    (run / "explained.png").unlink()
    (run / "explained.npz").unlink()
    result = cli(capfd, "report", run)
    assert result.returncode == 0, result.stderr
    assert (run / "explained.png").is_file() and "](explained.png)" in (run / "report.md").read_text()
    after = _maps(run)
    assert all(np.allclose(before[k], after[k], atol=1e-5) for k in before if k.startswith("map_"))


def test_eval_explain_false_writes_no_explanations(explained_run, tmp_path, capfd):
    result = cli(capfd, "evaluate", explained_run, "eval.explain=false", "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "eval"
    assert (out / "gallery.png").is_file() and not (out / "explained.png").exists() and not (out / "explained.npz").exists()
    assert "explained.png" not in (out / "report.md").read_text()


def test_a_run_whose_first_modality_the_default_method_cannot_explain_gets_no_figure_and_no_error(trained_audio_run,
                                                                                                     tmp_path, capfd):
    """The audio quickstart: its first modality is not a picture, Grad-CAM does not explain it, and ``xmcore report``
    draws the report as before, without a note: the figure was not asked for."""
    run = Path(shutil.copytree(trained_audio_run, tmp_path / "run"))
    result = cli(capfd, "report", run)
    assert result.returncode == 0, result.stderr
    assert (run / "gallery.png").is_file() and not (run / "explained.png").exists()
    assert "](explained.png)" not in (run / "report.md").read_text() and "note:" not in result.stderr
