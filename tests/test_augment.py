"""Augmentations: applied to training items only, repeatable for a seed, each doing what it says."""

import random

import pytest
import torch

from xmcore.plugins import load_plugins
from xmcore.registry import BuildContext
from xmcore.testing import build, sample_items, tiny_overrides
from conftest import ROOT, cli

PLUGINS = load_plugins()
IMAGE_AUGS = [c.name for c in PLUGINS["augmentation"] if c.accepts("image") and c.modalities]
TEXT_AUGS = ["random-deletion", "random-swap", "random-insertion"]


def seeded(fn, seed=0):
    random.seed(seed)
    torch.manual_seed(seed)
    return fn()


@pytest.mark.parametrize("name", IMAGE_AUGS)
def test_image_augmentation_is_repeatable_for_a_seed(name):
    aug = build(PLUGINS["augmentation"].get(name), BuildContext(modality="image"), p=1.0)
    image = sample_items("image", 1)[0]
    first = seeded(lambda: aug(image))
    again = seeded(lambda: aug(image))
    assert first.size == image.size and first.mode == "RGB"
    assert first.tobytes() == again.tobytes()
    outputs = {seeded(lambda: aug(image), seed).tobytes() for seed in range(5)}
    assert outputs - {image.tobytes()}  # p=1: it changes the image (RandAugment's own ops may each skip)


def test_text_operations():
    caption = "a red circle left of a blue square"
    n = len(caption.split())
    ops = {name: build(PLUGINS["augmentation"].get(name), BuildContext(modality="text"), p=1.0, alpha=0.25)
           for name in TEXT_AUGS}
    deleted = seeded(lambda: ops["random-deletion"](caption))
    assert len(deleted.split()) == n - 2
    swapped = seeded(lambda: ops["random-swap"](caption))
    assert sorted(swapped.split()) == sorted(caption.split()) and swapped != caption
    inserted = seeded(lambda: ops["random-insertion"](caption))
    assert len(inserted.split()) == n + 2 and set(inserted.split()) == set(caption.split())
    assert seeded(lambda: ops["random-swap"](caption)) == swapped
    never = build(PLUGINS["augmentation"].get("random-deletion"), BuildContext(modality="text"), p=0.0)
    assert never(caption) == caption


def test_synonym_replacement_from_a_file(tmp_path):
    (tmp_path / "syn.txt").write_text("circle ring disc\nsquare box\n")
    aug = build(PLUGINS["augmentation"].get("synonym-replacement"), BuildContext(modality="text", base_dir=tmp_path),
                synonyms="syn.txt", p=1.0, alpha=1.0)
    out = seeded(lambda: aug("a red circle left of a blue square")).split()
    assert out[2] in {"ring", "disc"} and out[7] == "box"
    from xmcore.errors import XmcoreError

    with pytest.raises(XmcoreError, match="does not exist"):
        build(PLUGINS["augmentation"].get("synonym-replacement"), BuildContext(modality="text", base_dir=tmp_path),
              synonyms="missing.txt")


def same(a, b):
    """Two preprocessed items (tensors, or a tokenizer's dict of tensors) are equal."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return a.shape == b.shape and torch.equal(a, b)


def test_augmentations_apply_to_training_items_only(plugins):
    """Through the data module `xmcore run` builds: training pairs are augmented; validation pairs and the
    items evaluation and indexing embed get the encoder's own preprocessing, nothing else."""
    from xmcore.data import materialize
    from xmcore.recipe import load_recipe, validate
    from xmcore.run import assemble

    recipe_path = ROOT / "recipes" / "quickstart.yaml"
    loaded = load_recipe(recipe_path, tiny_overrides(recipe_path, plugins) + [
        "augment.image=[{name: hflip, p: 1.0}]", "augment.text=[{name: random-deletion, p: 1.0, alpha: 0.5}]"])
    built, _, datamodule = assemble(validate(loaded, plugins), loaded.base_dir, None)
    pre = {m: e.preprocessor for m, e in built.encoders.items()}

    def plain(split, modality, index):
        return pre[modality](materialize(split.items[modality][index]))

    train = built.data.splits["train"]
    pairs = datamodule.train_dataloader().dataset
    for j in range(6):
        row = pairs[j]
        assert not same(row["image"], plain(train, "image", int(train.owner[j]))), j
        assert not same(row["text"], plain(train, "text", j)), j
    val = built.data.splits["val"]
    pairs = datamodule.val_dataloader().dataset
    for j in range(6):
        row = pairs[j]
        assert same(row["image"], plain(val, "image", int(val.owner[j]))) and same(row["text"], plain(val, "text", j))
    test = built.data.splits["test"]
    for loader, modality in zip(datamodule.item_dataloaders("test"), test.modalities):
        for i in range(6):
            assert same(loader.dataset[i]["item"], plain(test, modality, i)), (modality, i)


def test_recipe_with_augmentations_runs(plugins, tmp_path, capfd):
    recipe = ROOT / "recipes" / "quickstart.yaml"
    overrides = [
        "augment.image=[{name: random-resized-crop, scale: [0.8, 1.0]}, {name: random-erasing, p: 0.3}]",
        "augment.text=[{name: random-swap, p: 0.2}]",
    ]
    result = cli(capfd, "run", recipe, *tiny_overrides(recipe, plugins), *overrides, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "random-resized-crop" in (tmp_path / "run" / "recipe.yaml").read_text()


def test_augmentation_for_the_wrong_modality_is_rejected(capfd):
    result = cli(capfd, "validate", ROOT / "recipes" / "quickstart.yaml", "augment.text=[{name: hflip}]")
    assert result.returncode == 2
    assert "augment.text.0.name: augmentation 'hflip' does not accept modality 'text'" in result.stderr


def test_caption_sampling_visits_each_image_once_with_a_random_caption():
    from xmcore.data import PairDataset

    data = build(PLUGINS["dataset"].get("shapes"))
    split = data.splits["train"]
    identity = {"image": lambda x: x, "text": lambda x: x}
    sampled = PairDataset(split, identity, {}, sample_members=True)
    assert len(sampled) == len(split.items["image"]) and len(PairDataset(split, identity, {})) == len(split.items["text"])
    own = [split.items["text"][j] for j in range(len(split.owner)) if split.owner[j] == 3]
    drawn = {seeded(lambda: sampled[3]["text"], seed) for seed in range(20)}
    assert drawn <= set(own) and len(drawn) > 1
    assert sampled[3]["group"] == 3
