"""open_clip towers (plugins/xmcore-openclip): the towers compute what open_clip computes, train, freeze, index and
search, offline, on a tiny random open_clip architecture (xmcore-test-vit) whose weights the tests write."""

import json

import numpy as np
import pytest
import torch

from conftest import ROOT, cli
from xmcore.errors import XmcoreError
from xmcore.registry import BuildContext
from xmcore.testing import sample_items, tiny_overrides

open_clip = pytest.importorskip("open_clip")
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A whole tiny open_clip model's weights, as open_clip_pytorch_model.bin holds a real one's."""
    from xmcore_openclip.towers import model_config

    model_config("xmcore-test-vit", "encoders.image")  # registers the plugin's test architectures with open_clip
    torch.manual_seed(0)
    model = open_clip.create_model("xmcore-test-vit").eval()
    path = tmp_path_factory.mktemp("clip") / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    return path, model


def tower(plugins, modality, **params):
    component = plugins["encoder"].get("open-clip")
    return component.build(component.params.model_validate({"model_name": "xmcore-test-vit", **params}),
                           BuildContext(modality=modality))


def towers(clip_file):
    """Overrides putting both towers of the weights file in the quickstart recipe."""
    return [f"encoders.{m}.{key}" for m in ("image", "text")
            for key in ("name=open-clip", "model_name=xmcore-test-vit", f"checkpoint={clip_file}")]


def test_the_towers_compute_what_open_clip_computes(plugins, clip_file):
    path, model = clip_file
    images, texts = sample_items("image", 3), ["a red circle left of a blue square", "a green triangle", ""]
    image_tower, text_tower = tower(plugins, "image", checkpoint=str(path)), tower(plugins, "text", checkpoint=str(path))
    assert [type(t).__name__ for t in (image_tower, text_tower)] == ["ImageTower", "TextTower"]
    # open_clip's own preprocessing and tokenizer (CLIP's BPE vocabulary ships inside open_clip: no download)
    _, _, preprocess = open_clip.create_model_and_transforms("xmcore-test-vit")
    tokenizer = open_clip.get_tokenizer("xmcore-test-vit")
    with torch.no_grad():
        expected_images = model.encode_image(torch.stack([preprocess(im) for im in images]))
        expected_texts = model.encode_text(tokenizer(texts))
        pre = image_tower.preprocessor
        got_images = image_tower.eval()(pre.collate([pre(im) for im in images]))
        pre = text_tower.preprocessor
        got_texts = text_tower.eval()(pre.collate([pre(t) for t in texts]))
    assert got_images.shape == (3, 16) and image_tower.output_dim == text_tower.output_dim == 16
    assert torch.allclose(got_images, expected_images, atol=1e-6)
    assert torch.allclose(got_texts, expected_texts, atol=1e-6)
    # each encoder keeps its own tower only
    assert not any(k.startswith("model.visual") or "logit_scale" in k for k in text_tower.state_dict())
    assert all(k.startswith("visual.") for k in image_tower.state_dict())

    random = tower(plugins, "image")  # no checkpoint: random weights
    assert not torch.equal(random.visual.conv1.weight, image_tower.visual.conv1.weight)
    changed = tower(plugins, "image", preprocess={"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    assert "0.5" in repr(changed.preprocessor) and repr(changed.preprocessor) != repr(random.preprocessor)


def test_a_long_query_is_said_to_be_cut(plugins):
    text = tower(plugins, "text", context_length=8)
    assert text.query_warnings("a red circle") == []
    (note,) = text.query_warnings(" ".join(["red"] * 20))
    assert "first 6 of this query's 20 tokens" in note


def test_two_fine_tuning_steps_then_index_and_search_without_the_weights_file(plugins, clip_file, tmp_path, capfd):
    path, _ = clip_file
    weights = tmp_path / "clip.bin"
    weights.write_bytes(path.read_bytes())
    run = tmp_path / "run"
    overrides = [f"encoders.{m}.{key}" for m in ("image", "text")
                 for key in ("name=open-clip", "model_name=xmcore-test-vit", f"checkpoint={weights}")]
    result = cli(capfd, "run", QUICKSTART, *tiny_overrides(QUICKSTART, plugins, overrides), *overrides, "--out", run)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    trained = state["state_dict"]
    start = torch.load(weights, map_location="cpu", weights_only=True)
    for ours, theirs in (("encoders.image.visual.conv1.weight", "visual.conv1.weight"),
                         ("encoders.text.model.token_embedding.weight", "token_embedding.weight")):
        assert trained[ours].shape == start[theirs].shape
        assert not torch.equal(trained[ours], start[theirs])  # both towers were fine-tuned

    index = tmp_path / "index"
    built = cli(capfd, "index", run, "--out", index, "--split", "test")
    assert built.returncode == 0, built.stderr[-3000:]
    weights.unlink()  # the index is self-contained: its model holds the weights, its recipe no checkpoint
    stored = (index / "model" / "recipe.yaml").read_text()
    assert str(weights) not in stored and "checkpoint: null" in stored
    found = cli(capfd, "search", index, "--text", "a red circle", "-k", "3", "--json")
    assert found.returncode == 0, found.stderr[-3000:]
    assert len(json.loads(found.stdout)) == 3
    images = [json.loads(line) for line in (index / "metadata" / "image.jsonl").read_text().splitlines()]
    itself = cli(capfd, "search", index, "--image", index / images[1]["media"], "--target", "image", "-k", "1", "--json")
    assert itself.returncode == 0, itself.stderr[-3000:]
    (hit,) = json.loads(itself.stdout)  # queries are preprocessed and encoded as the gallery was
    assert hit["id"] == images[1]["id"] and hit["score"] == pytest.approx(1.0, abs=1e-4)


def test_frozen_towers_are_encoded_once_cached_and_unchanged(plugins, clip_file, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("XMCORE_CACHE_DIR", str(tmp_path / "cache"))
    path, _ = clip_file
    overrides = towers(path) + ["encoders.image.freeze=true", "encoders.text.freeze=true"]
    first = cli(capfd, "run", QUICKSTART, *tiny_overrides(QUICKSTART, plugins, overrides), *overrides, "--out", tmp_path / "a")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "train image: 16 features encoded" in first.stderr and "train text: 80 features encoded" in first.stderr
    second = cli(capfd, "run", QUICKSTART, *tiny_overrides(QUICKSTART, plugins, overrides), *overrides, "--out", tmp_path / "b")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "features read from the cache" in second.stderr and "features encoded" not in second.stderr
    assert json.loads((tmp_path / "a" / "metrics.json").read_text()) == json.loads((tmp_path / "b" / "metrics.json").read_text())
    trained = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    start = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(trained["encoders.image.visual.conv1.weight"], start["visual.conv1.weight"])
    assert torch.equal(trained["encoders.text.model.token_embedding.weight"], start["token_embedding.weight"])


@pytest.mark.parametrize("params, message", [
    ({"model_name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"},
     "open_clip would download the 'laion2b_s34b_b79k' weights of ViT-B-32; xmcore never downloads weights: download "
     "the file from the Hugging Face repository laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
    ({"model_name": "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"}, "xmcore never downloads weights"),
    ({"model_name": "ViT-B-33"}, "open_clip has no architecture 'ViT-B-33'; did you mean ViT-B-32"),
    ({"model_name": "ViT-B-32", "pretrained": "openai", "checkpoint": "x.bin"},
     "trained with QuickGELU activations, the architecture ViT-B-32 is built without them: use encoders.text.model_name=ViT-B-32-quickgelu"),
    ({"model_name": "ViT-B-32", "pretrained": "no-such-tag", "checkpoint": "x.bin"}, "its tags: openai, laion400m_e31"),
    ({"checkpoint": "missing.bin"}, "encoders.text.checkpoint: no such file "),
])
def test_weights_that_would_come_from_the_network_or_do_not_fit_are_clear_errors(plugins, params, message):
    with pytest.raises(XmcoreError) as error:
        tower(plugins, "text", **params)
    assert message in str(error.value)


def test_a_weights_file_of_another_architecture_is_refused_naming_it(plugins, tmp_path):
    other = tmp_path / "other.bin"
    torch.save({"visual.stem.weight": torch.zeros(3)}, other)
    with pytest.raises(XmcoreError, match=r"other.bin does not match open_clip's xmcore-test-vit: missing \d+ tensors"):
        tower(plugins, "image", checkpoint=str(other))
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a weights file")
    with pytest.raises(XmcoreError, match="cannot read .*bad.bin as a weights file"):
        tower(plugins, "image", checkpoint=str(bad))
    resized = tmp_path / "wide.bin"
    state = open_clip.create_model("xmcore-test-vit").state_dict()
    state["visual.conv1.weight"] = torch.zeros(64, 3, 8, 8)
    torch.save(state, resized)
    with pytest.raises(XmcoreError, match="wide.bin does not fit open_clip's xmcore-test-vit: size mismatch"):
        tower(plugins, "image", checkpoint=str(resized))


def test_the_pretrained_tags_preprocessing_is_used(plugins, monkeypatch, tmp_path):
    """A tag's mean and std (e.g. SigLIP's 0.5) reach the transform, and export writes them out for the index."""
    from xmcore_openclip import towers as module

    tag = {"hf_hub": "someone/tiny/", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "resize_mode": "squash"}
    monkeypatch.setattr(module.open_clip, "get_pretrained_cfg", lambda name, t: tag if t == "tiny-tag" else {})
    monkeypatch.setattr(module, "_load", lambda *args: None)  # the tag's real weights would be a download
    (tmp_path / "weights.bin").touch()
    image = tower(plugins, "image", pretrained="tiny-tag", checkpoint=str(tmp_path / "weights.bin"))
    assert image.preprocessor.config["mean"] == (0.5, 0.5, 0.5) and image.preprocessor.config["resize_mode"] == "squash"
    exported = image.export(None)
    assert exported == {"checkpoint": None, "pretrained": None, "preprocess": {
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic", "resize_mode": "squash", "fill_color": 0}}
    rebuilt = tower(plugins, "image", **exported)
    assert repr(rebuilt.preprocessor) == repr(image.preprocessor)
    x = np.asarray(image.preprocessor(sample_items("image", 1)[0]))
    assert x.shape == (3, 32, 32)
