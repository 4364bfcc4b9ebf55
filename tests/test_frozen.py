"""Frozen encoders stay frozen (every weight and BatchNorm statistic); their features are computed once."""

from contextlib import contextmanager

import torch

from conftest import ROOT
from xmcore.plugins import load_plugins
from xmcore.recipe import load_recipe, validate
from xmcore.testing import tiny_overrides


def tiny_recipe(overrides):
    plugins = load_plugins()
    recipe_path = ROOT / "recipes" / "quickstart.yaml"
    loaded = load_recipe(recipe_path, tiny_overrides(recipe_path, plugins) + overrides)
    return validate(loaded, plugins), plugins, loaded.base_dir


def fit(tmp_path, overrides):
    from xmcore.run import train_and_evaluate

    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe, plugins, base_dir = tiny_recipe(overrides)
    return train_and_evaluate(recipe, plugins, base_dir, tmp_path / "run")


def checkpoint_state(tmp_path):
    return torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@contextmanager
def image_encoder_calls():
    """Counts the items the timm image encoder is run on (a global forward hook on the real module)."""
    seen = []

    def hook(module, args, output):
        if type(module).__name__ == "TimmEncoder":
            seen.append(len(output))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def snapshot(module):
    """The module's tensors (parameters and buffers), copied."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


def test_frozen_encoder_is_unchanged_by_training(tmp_path):
    """Every parameter and buffer of the frozen tower equals its initial value; the other tower trained."""
    import pytorch_lightning as pl

    from xmcore.run import assemble, build_trainer

    # The image modality is augmented, so its encoder runs in every step (no precomputed features).
    recipe, _, base_dir = tiny_recipe(["encoders.image.freeze=true", "augment.image=[{name: random-resized-crop}]",
                                       "trainer.limit_train_batches=3"])
    pl.seed_everything(recipe.seed, verbose=False)
    built, module, datamodule = assemble(recipe, base_dir, tmp_path / "run")  # as `xmcore run` does
    before = {m: snapshot(module.encoders[m]) for m in ("image", "text")}
    trainer, _ = build_trainer(recipe, built, datamodule, tmp_path / "run")
    with image_encoder_calls() as calls:
        trainer.fit(module, datamodule=datamodule)
    assert sum(calls) >= 3 * recipe.data.batch_size  # it did run in the training steps

    after = snapshot(module.encoders["image"])
    assert after.keys() == before["image"].keys() and any(k.endswith("running_mean") for k in after)
    changed = [k for k, v in after.items() if not torch.equal(v, before["image"][k])]
    assert changed == [], f"the frozen encoder changed: {changed[:5]}"
    # the checkpoint holds those same initial values
    saved = {k.removeprefix("encoders.image."): v for k, v in checkpoint_state(tmp_path).items()
             if k.startswith("encoders.image.") and isinstance(v, torch.Tensor)}
    assert saved.keys() == after.keys() and all(torch.equal(saved[k], before["image"][k]) for k in saved)
    # ...while the trainable text tower did train: the comparison above can tell a change
    text = snapshot(module.encoders["text"])
    assert any(not torch.equal(v, before["text"][k]) for k, v in text.items())


def test_frozen_unaugmented_modality_is_encoded_once(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("XMCORE_CACHE_DIR", str(tmp_path / "cache"))
    recipe, _, _ = tiny_recipe([])
    with image_encoder_calls() as calls:
        metrics = fit(tmp_path, ["encoders.image.freeze=true"])
    shapes = recipe.data.params
    images = shapes.train + shapes.val + shapes.test  # the shapes dataset's images, in all splits
    assert sum(calls) == images  # every image once: not in the training steps, not again for evaluation
    assert "encoding image once with the frozen encoder" in capfd.readouterr().err
    assert {"i2t/R@1", "t2i/R@1", "rsum"} <= set(metrics)
    state = checkpoint_state(tmp_path)
    assert any(k.startswith("encoders.image.") for k in state)  # the checkpoint stays self-contained


def test_training_is_the_same_whether_features_were_encoded_or_read_from_the_cache(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("XMCORE_CACHE_DIR", str(tmp_path / "cache"))
    common = ["encoders.image.freeze=true", "trainer.limit_train_batches=4"]
    with image_encoder_calls() as encoded:
        first = fit(tmp_path / "a", common)
    err = capfd.readouterr().err
    assert "train image: " in err and "features encoded" in err and "read from the cache" not in err
    with image_encoder_calls() as reread:
        second = fit(tmp_path / "b", common)
    err = capfd.readouterr().err
    assert sum(encoded) > 0 and sum(reread) == 0  # the second run never ran the image encoder
    assert "features read from the cache" in err and "features encoded" not in err
    assert first == second


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
