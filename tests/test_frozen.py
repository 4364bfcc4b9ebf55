"""Frozen encoders stay frozen (weights and BatchNorm statistics); their features are computed once."""

import torch

from conftest import ROOT
from xmcore.plugins import load_plugins
from xmcore.recipe import load_recipe, validate
from xmcore.testing import tiny_overrides


def fit(tmp_path, overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    from xmcore.run import train_and_evaluate

    plugins = load_plugins()
    recipe_path = ROOT / "recipes" / "quickstart.yaml"
    loaded = load_recipe(recipe_path, tiny_overrides(recipe_path, plugins) + overrides)
    recipe = validate(loaded, plugins)
    return train_and_evaluate(recipe, plugins, loaded.base_dir, tmp_path / "run")


def checkpoint_state(tmp_path):
    return torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def test_frozen_encoder_is_unchanged_by_training(tmp_path):
    # The image modality is augmented, so its encoder runs every step (no precomputed features).
    torch.manual_seed(0)
    metrics = fit(tmp_path, ["encoders.image.freeze=true", "augment.image=[{name: random-resized-crop}]",
                             "trainer.limit_train_batches=3"])
    assert "i2t/R@1" in metrics
    state = checkpoint_state(tmp_path)
    # A fresh BatchNorm starts with zero running means; a frozen encoder must never update them.
    bn = [k for k in state if k.startswith("encoders.image.") and k.endswith("running_mean")]
    assert bn, "expected BatchNorm statistics in the image encoder"
    assert all(torch.equal(state[k], torch.zeros_like(state[k])) for k in bn), "BatchNorm statistics moved"


def test_frozen_unaugmented_modality_is_encoded_once(tmp_path, capfd):
    metrics = fit(tmp_path, ["encoders.image.freeze=true"])
    assert metrics["i2t/R@1"] >= 0
    assert "encoding image once with the frozen encoder" in capfd.readouterr().err
    state = checkpoint_state(tmp_path)
    assert any(k.startswith("encoders.image.") for k in state)  # the checkpoint stays self-contained


def test_training_is_the_same_whether_features_were_encoded_or_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XMCORE_CACHE_DIR", str(tmp_path / "cache"))
    first = fit(tmp_path / "a", ["encoders.image.freeze=true", "trainer.limit_train_batches=4"])
    second = fit(tmp_path / "b", ["encoders.image.freeze=true", "trainer.limit_train_batches=4"])
    assert (tmp_path / "cache").is_dir() and first == second


def test_precompute_off_runs_the_frozen_encoder_in_every_step_and_trains_the_same(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("XMCORE_CACHE_DIR", str(tmp_path / "cache"))
    common = ["encoders.image.freeze=true", "trainer.limit_train_batches=4", "cache.enabled=false"]
    precomputed = fit(tmp_path / "a", common)
    assert "encoding image once" in capfd.readouterr().err
    every_step = fit(tmp_path / "b", common + ["cache.precompute=false"])
    assert "encoding image once" not in capfd.readouterr().err
    assert not (tmp_path / "cache").exists()
    # the same features either way (up to float summation order in batches of other sizes)
    assert every_step.keys() == precomputed.keys()
    for key, value in precomputed.items():
        assert abs(every_step[key] - value) <= 0.02, key
