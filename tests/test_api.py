"""xmcore from Python (xmcore.api), as the README shows it: load a run or an index, encode items of any
modality, search an index, train a recipe; the vectors are the ones `xmcore index` and `xmcore search` use."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xmcore
from conftest import ROOT, cli
from xmcore.errors import XmcoreError


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_hits(hits, printed):
    """API hits against `xmcore search --json`: the same items in the same order, scores to 1e-6."""
    ours = [h.to_dict() for h in hits]
    assert [{**h, "score": None} for h in ours] == [{**h, "score": None} for h in printed]
    np.testing.assert_allclose([h["score"] for h in ours], [h["score"] for h in printed], atol=1e-6)


@pytest.fixture(scope="module")
def run_model(trained_run):
    return xmcore.load(trained_run)


@pytest.fixture(scope="module")
def index(gallery_index):
    return xmcore.open_index(gallery_index)


@pytest.fixture(scope="module")
def gallery(gallery_index):
    """The index's test split: captions and picture files, with the embeddings `xmcore index` stored for them."""
    captions = [row["caption"] for row in lines(gallery_index / "metadata" / "text.jsonl")]
    pictures = [gallery_index / row["media"] for row in lines(gallery_index / "metadata" / "image.jsonl")]
    stored = {m: np.load(gallery_index / "embeddings" / f"{m}-00000.npy") for m in ("text", "image")}
    return captions, pictures, stored


def test_import_xmcore_loads_no_torch_until_a_model_is_loaded():
    code = ("import sys, xmcore; xmcore.load, xmcore.open_index, xmcore.run, xmcore.Model, xmcore.Hit; "
            "print(sorted(m for m in ('torch', 'pytorch_lightning', 'faiss', 'xmcore.api') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split() == ["['xmcore.api']"]


def test_xmcore_run_stays_the_function_though_the_submodule_of_that_name_is_imported():
    from xmcore.run import best_checkpoint  # binds the submodule on its package, as any import of it does

    assert xmcore.run is xmcore.api.run and callable(xmcore.run)
    assert sys.modules["xmcore.run"].best_checkpoint is best_checkpoint
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        xmcore.nothing  # noqa: B018


def test_a_run_embeds_its_gallery_as_the_index_stored_it(run_model, index, gallery):
    captions, pictures, stored = gallery
    text, image = run_model.encode_text(captions), run_model.encode_image(pictures)
    assert text.dtype == np.float32 and text.shape == (len(captions), run_model.dim) == stored["text"].shape
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1, atol=1e-6)
    # same weights, preprocessing and encoders as `xmcore index` (its DataLoader path) and the index's stored model
    np.testing.assert_allclose(text, stored["text"], atol=1e-6)
    np.testing.assert_allclose(image, stored["image"], atol=1e-6)
    np.testing.assert_allclose(index.model.encode_text(captions), text, atol=1e-6)
    np.testing.assert_allclose(index.model.encode_image(pictures), image, atol=1e-6)
    assert run_model.modalities == index.model.modalities == ["image", "text"]


def test_search_from_python_gives_what_xmcore_search_prints(index, gallery_index, capfd):
    query = "a red circle left of a blue square"
    hits = index.search(text=query, k=5)
    result = cli(capfd, "search", gallery_index, "--text", query, "-k", "5", "--json")
    assert result.returncode == 0, result.stderr
    assert_same_hits(hits, json.loads(result.stdout))
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5] and all(h.id.startswith("image-") for h in hits)
    assert hits[0].metadata == index.item(hits[0].id) and hits[0].score >= hits[-1].score

    picture = gallery_index / "media" / "image-2.png"
    for query in (picture, str(picture), picture.read_bytes()):  # a path or the file's bytes
        (hit,) = index.search(image=query, target="image", k=1)
        assert hit.id == "image-2" and hit.score == pytest.approx(1.0, abs=1e-5)
    texts = index.search(image=picture, k=3)  # default target: the other modality
    assert len(texts) == 3 and all(h.metadata["modality"] == "text" for h in texts)

    # what the CLI notes on stderr about a query comes as a Python warning
    with pytest.warns(UserWarning, match=r"2 of the query's 3 words are unknown to the text model \(zorblax, quux\)"):
        assert len(index.search(text="a zorblax quux", k=2)) == 2


def test_items_of_every_kind_embed_alike_in_batches_with_a_progress_bar(run_model, gallery, capfd):
    from PIL import Image

    _, pictures, stored = gallery
    with Image.open(pictures[1]) as im:
        pil = im.convert("RGB")
    rows = run_model.encode_image([pictures[1], str(pictures[1]), pil, pictures[1].read_bytes()])
    np.testing.assert_allclose(rows, np.repeat(stored["image"][1:2], 4, axis=0), atol=1e-6)

    calls = []
    hook = run_model._model.encoders["image"].register_forward_hook(lambda m, i, o: calls.append(len(o)))
    try:
        capfd.readouterr()
        batched = run_model.encode_image(pictures[:5], batch_size=2, progress=True)
        assert calls == [2, 2, 1]
        err = capfd.readouterr().err
        assert "encoding image: 100%" in err and "5/5" in err
        calls.clear()
        run_model.encode_image(pictures[:5])  # one batch: no bar unless asked
        assert calls == [5] and "encoding image" not in capfd.readouterr().err
    finally:
        hook.remove()
    np.testing.assert_allclose(batched, stored["image"][:5], atol=1e-6)


def test_embeddings_as_torch_tensors_on_the_chosen_device(trained_run, run_model, gallery):
    import torch

    captions, _, stored = gallery
    tensor = run_model.encode_text(captions[:3], as_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu" and tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor.numpy(), stored["text"][:3], atol=1e-6)
    assert run_model.to("cpu") is run_model and run_model.device == torch.device("cpu")
    with pytest.raises(XmcoreError, match="'gpu0' is not a device torch knows"):
        run_model.to("gpu0")
    assert "image, text -> 128-d" in repr(run_model)


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA device")
def test_a_model_on_the_gpu_embeds_as_on_the_cpu(trained_run, gallery):
    captions, pictures, stored = gallery
    model = xmcore.load(trained_run, device="cuda")
    assert model.device.type == "cuda" and model.encode_text(captions[:4], as_tensor=True).device.type == "cuda"
    np.testing.assert_allclose(model.encode_text(captions[:4]), stored["text"][:4], atol=1e-4)
    np.testing.assert_allclose(model.encode_image(pictures[:4]), stored["image"][:4], atol=1e-4)


def test_an_audio_run_encodes_clip_files_as_its_index_and_xmcore_search_do(trained_audio_run, audio_index, capfd):
    clips = lines(audio_index / "metadata" / "audio.jsonl")
    files = [audio_index / c["media"] for c in clips[:3]]
    model, stored = xmcore.load(trained_audio_run), xmcore.open_index(audio_index).model
    assert model.modalities == ["audio", "text"] and model.file_modalities == ["audio"]
    from_run = model.encode("audio", files)
    np.testing.assert_allclose(stored.encode("audio", files), from_run, atol=1e-6)
    # the index keeps 16-bit copies of the generated clips: the gallery's vectors, to that precision
    np.testing.assert_allclose(from_run, np.load(audio_index / "embeddings" / "audio-00000.npy")[:3], atol=3e-3)

    result = cli(capfd, "search", audio_index, "--audio", files[0], "-k", "3", "--json")
    assert result.returncode == 0, result.stderr
    hits = xmcore.open_index(audio_index).search(audio=files[0], k=3)
    assert_same_hits(hits, json.loads(result.stdout))
    captions = [h.metadata["caption"] for h in hits]
    np.testing.assert_allclose(model.encode_text(captions) @ from_run[0], [h.score for h in hits], atol=1e-5)


def test_xmcore_run_trains_in_this_process_and_returns_the_run_directory_and_metrics(tmp_path, plugins):
    from xmcore.testing import tiny_overrides

    recipe = ROOT / "recipes" / "quickstart.yaml"
    run_dir, metrics = xmcore.run(recipe, overrides=tiny_overrides(recipe, plugins) + ["seed=3"], out=tmp_path / "r")
    assert run_dir == tmp_path / "r" and (run_dir / "checkpoints").is_dir()
    assert metrics == json.loads((run_dir / "metrics.json").read_text()) and "i2t/R@1" in metrics
    assert "seed: 3" in (run_dir / "recipe.yaml").read_text()
    assert xmcore.load(run_dir).encode_text(["a red circle"]).shape == (1, 128)
    with pytest.raises(XmcoreError, match="expected a list of 'key=value'"):
        xmcore.run(recipe, overrides="seed=1")


@pytest.mark.parametrize("call,fragment", [
    (lambda m: m.encode("txt", ["a"]), "no 'txt' encoder; did you mean 'text'? it embeds: image, text"),
    (lambda m: m.encode_text([]), "the list of items is empty"),
    (lambda m: m.encode_text("a red circle"), "expected a list of items, got str"),
    (lambda m: m.encode_image(np.zeros((2, 8, 8, 3))), "expected a list of items, got ndarray"),
    (lambda m: m.encode_image(["a red circle"]), "items[0]: no such file a red circle"),
    (lambda m: m.encode_image([Path(__file__)]), "not a readable image (expected PNG, JPEG"),
    (lambda m: m.encode_image([ROOT]), "a folder; give a file"),
    (lambda m: m.encode_text([Path(__file__)]), "the 'text' encoder reads no files; give the items themselves"),
    (lambda m: m.encode_text(["a"], batch_size=0), "batch_size: expected a positive number"),
])
def test_bad_input_to_encode_says_what_to_give(run_model, call, fragment):
    with pytest.raises(XmcoreError) as exc:
        call(run_model)
    assert fragment in str(exc.value)


@pytest.mark.parametrize("call,fragment", [
    (lambda i: i.search(k=3), "give one query as <modality>=..."),
    (lambda i: i.search(text="a", image="b.png"), "(got text, image)"),
    (lambda i: i.search(audio="a.wav"), "no 'audio' encoder"),
    (lambda i: i.search(text="a", target="imag"), "target='imag': did you mean 'image'?"),
    (lambda i: i.search(text="  "), "the text query is empty"),
    (lambda i: i.search(text="a", k=0), "k is the number of results"),
    (lambda i: i.item("image-99999"), "no item 'image-99999'"),
])
def test_bad_searches_say_what_to_give(index, call, fragment):
    with pytest.raises(XmcoreError) as exc:
        call(index)
    assert fragment in str(exc.value)


def test_a_path_that_is_neither_a_run_nor_an_index_is_refused(tmp_path, trained_run, gallery_index):
    with pytest.raises(XmcoreError, match="neither a run directory .* nor an index folder"):
        xmcore.load(tmp_path)
    with pytest.raises(XmcoreError, match="no such folder"):
        xmcore.load(tmp_path / "missing")
    with pytest.raises(XmcoreError, match="is a run directory, not an index folder; build one with `xmcore index"):
        xmcore.open_index(trained_run)
    (tmp_path / "building.json").write_text("{}")
    with pytest.raises(XmcoreError, match="an interrupted build"):
        xmcore.load(tmp_path)
    (tmp_path / "recipe.yaml").write_text((trained_run / "recipe.yaml").read_text())
    (tmp_path / "building.json").unlink()
    with pytest.raises(XmcoreError, match="no checkpoints/best.ckpt or last.ckpt"):
        xmcore.load(tmp_path)


def test_an_index_folder_loads_its_stored_model_and_refuses_changed_weights(gallery_index, tmp_path):
    import shutil

    model = xmcore.load(gallery_index)
    assert model.source == gallery_index and model.recipe.fusion.name == "nonlinear"
    copy = Path(shutil.copytree(gallery_index, tmp_path / "idx"))
    with open(copy / "model" / "weights.pt", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(XmcoreError, match="differ from the manifest .*model/weights.pt"):
        xmcore.load(copy)


README = (ROOT / "README.md").read_text()


@pytest.mark.xfail("## Use from Python" not in README, strict=True, reason="the README has no 'Use from Python' section yet")
def test_the_readme_python_example_runs_as_written(trained_run, gallery_index, plugins, tmp_path, monkeypatch, capsys):
    """The README's example, after its CLI commands (runs/shapes, indexes/shapes), with a tiny trainer for xmcore.run."""
    import xmcore.api
    from xmcore.testing import tiny_overrides

    section = README.split("## Use from Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "runs").mkdir()
    (tmp_path / "indexes").mkdir()
    (tmp_path / "runs" / "shapes").symlink_to(trained_run)
    (tmp_path / "indexes" / "shapes").symlink_to(gallery_index)
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    monkeypatch.chdir(tmp_path)
    real = xmcore.api.run
    tiny = tiny_overrides(ROOT / "recipes" / "quickstart.yaml", plugins)
    monkeypatch.setattr(xmcore.api, "run", lambda recipe, overrides=(), out=None, **kw: real(recipe, tiny + list(overrides), out, **kw))
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()
