"""Evaluation protocols: relevance by class or by owner (``eval.relevance``), and COCO's 1k folds (``eval.folds``).

The references are computed independently of xmcore's evaluator, as in test_conformance.py: torchmetrics over the
full score matrix, with relevance read from the fixture files themselves (the CSV's label column, the images'
own captions), not from the splits xmcore built.
"""

import json

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP

from conftest import ROOT, cli, write_csv
from test_conformance import metrics, reference
from xmcore.errors import XmcoreError
from xmcore.evaluation import evaluate, evaluate_folds
from xmcore.plugins import load_plugins
from xmcore.recipe import load_recipe, validate
from xmcore.run import build_data
from xmcore.testing import TINY_TRAINER

PLUGINS = load_plugins()
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
COLOURS = ["red", "green", "blue", "yellow"]


def write_labelled_csv(tmp_path, test_images=9, unlabelled=0):
    """A CSV (path, caption, colour, split) with real images: 8 training, 2 validation and ``test_images`` test
    images; image k is drawn in colour k % 3 and has two captions; the last ``unlabelled`` test images have no
    colour.  Returns the test rows."""
    from conftest import write_image

    rows = []
    for split, count in (("train", 8), ("val", 2), ("test", test_images)):
        for k in range(count):
            colour = COLOURS[k % 3]
            write_image(tmp_path / "img" / f"{split}{k}.png", colour)
            label = "" if split == "test" and k >= count - unlabelled else colour
            rows += [(f"img/{split}{k}.png", f"{colour} square {k} caption {c}", label, split) for c in range(2)]
    write_csv(tmp_path, rows=rows)
    return [r for r in rows if r[3] == "test"]


def csv_overrides(tmp_path, *extra):
    return ["data.name=csv", f"data.path={tmp_path / 'data.tsv'}", "data.label_column=colour",
            "data.split_column=split", *extra]


def built_test_split(tmp_path, *overrides):
    recipe = validate(load_recipe(QUICKSTART, csv_overrides(tmp_path, *overrides)), PLUGINS)
    return build_data(recipe, tmp_path).splits["test"]


def relevance_from_rows(rows, by):
    """queries x gallery relevance for i2t and t2i, read from the CSV rows: same image, or same colour."""
    images = list(dict.fromkeys(r[0] for r in rows))
    colour = {r[0]: r[2] for r in rows}
    if by == "owner":
        i2t = torch.tensor([[r[0] == image for r in rows] for image in images])
    else:
        i2t = torch.tensor([[colour[r[0]] == colour[image] for r in rows] for image in images])
    return {"i2t": i2t, "t2i": i2t.T}


def references(emb, relevant):
    unit = {m: torch.nn.functional.normalize(e, dim=-1) for m, e in emb.items()}
    scores = {"i2t": unit["image"] @ unit["text"].T, "t2i": unit["text"] @ unit["image"].T}
    out = {}
    for d in ("i2t", "t2i"):
        out[f"{d}/mAP"] = reference(scores[d], relevant[d], RetrievalMAP)
        out[f"{d}/R@1"] = reference(scores[d], relevant[d], RetrievalHitRate, top_k=1)
        out[f"{d}/R@5"] = reference(scores[d], relevant[d], RetrievalHitRate, top_k=5)
    return out


def random_embeddings(split, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(len(split.items[m]), 8, generator=g) for m in split.modalities}


@pytest.mark.parametrize("relevance, by", [("label", "label"), ("auto", "owner"), ("owner", "owner")])
def test_csv_relevance_against_references(relevance, by, tmp_path):
    rows = write_labelled_csv(tmp_path)
    split = built_test_split(tmp_path, f"eval.relevance={relevance}")
    assert split.relevance == by
    emb = random_embeddings(split)
    ours = evaluate(emb, split, metrics())[1]
    expected = references(emb, relevance_from_rows(rows, by))
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
    other = references(emb, relevance_from_rows(rows, "owner" if by == "label" else "label"))
    assert ours["i2t/mAP"] != pytest.approx(other["i2t/mAP"], abs=1e-3)  # the two protocols differ on this data


def test_owner_relevance_overrides_a_dataset_that_judges_by_class(tmp_path):
    from conftest import write_image

    for split in ("train", "val", "test"):
        for colour in ("red", "blue"):
            for i in range(3):
                write_image(tmp_path / "folders" / split / colour / f"{i}.png", colour)
    base = ["data.name=imagefolder", f"data.root={tmp_path / 'folders'}", "data.templates=['a {label} one', 'the {label}']"]
    auto = build_data(validate(load_recipe(QUICKSTART, base), PLUGINS), tmp_path).splits["test"]
    owner = build_data(validate(load_recipe(QUICKSTART, [*base, "eval.relevance=owner"]), PLUGINS), tmp_path).splits["test"]
    assert auto.relevance == "label" and owner.relevance == "owner"
    emb = random_embeddings(owner, seed=1)
    captions = [(str(img), t) for img, k in zip(owner.items["image"], range(6)) for t in range(2)]
    i2t = torch.tensor([[c[0] == str(img) for c in captions] for img in owner.items["image"]])
    expected = references(emb, {"i2t": i2t, "t2i": i2t.T})
    ours = evaluate(emb, owner, metrics())[1]
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
    by_class = evaluate(emb, auto, metrics())[1]
    assert by_class["i2t/mAP"] != pytest.approx(ours["i2t/mAP"], abs=1e-3)


def test_label_relevance_needs_labels(tmp_path, capfd):
    write_labelled_csv(tmp_path)
    recipe = validate(load_recipe(QUICKSTART, [*csv_overrides(tmp_path), "data.label_column=null",
                                               "eval.relevance=label"]), PLUGINS)
    with pytest.raises(XmcoreError) as raised:
        build_data(recipe, tmp_path)
    message = str(raised.value)
    assert "eval.relevance: 'label' ranks by class, but dataset 'csv'" in message
    assert "label_column" in message and "eval.relevance=auto" in message  # the fix

    result = cli(capfd, "run", QUICKSTART, "eval.relevance=label", *TINY_TRAINER, "--out", tmp_path / "run")
    assert result.returncode == 2 and "dataset 'shapes'" in result.stderr and "no class labels" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


def test_label_relevance_refuses_unlabelled_items(tmp_path):
    write_labelled_csv(tmp_path, unlabelled=2)
    with pytest.raises(XmcoreError, match=r"2 of 9 image items of split 'test' .* have no label \(first: .*test7.png\)"):
        built_test_split(tmp_path, "eval.relevance=label")


def test_a_run_with_label_relevance_reports_class_level_metrics(tmp_path, capfd):
    rows = write_labelled_csv(tmp_path)
    out = tmp_path / "run"
    result = cli(capfd, "run", QUICKSTART, *csv_overrides(tmp_path, "eval.relevance=label"), "encoders.image.img_size=32",
                 *TINY_TRAINER, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    values = json.loads((out / "metrics.json").read_text())
    saved = np.load(out / "embeddings.npz")
    emb = {m: torch.from_numpy(saved[m]) for m in ("image", "text")}
    expected = references(emb, relevance_from_rows(rows, "label"))
    for key, value in expected.items():
        assert values[key] == pytest.approx(value, abs=1e-6), key


# --------------------------------------------------------------------------- folds


def fold_references(emb, owner, folds, fold_size):
    """Each fold's R@1/R@5/mAP by torchmetrics on the fold's own score matrix, averaged by hand."""
    per_fold = []
    for f in range(folds):
        images = torch.arange(f * fold_size, (f + 1) * fold_size)
        texts = torch.from_numpy(np.flatnonzero((owner >= f * fold_size) & (owner < (f + 1) * fold_size)))
        i2t = images[:, None] == torch.from_numpy(owner)[texts][None, :]
        per_fold.append(references({"image": emb["image"][images], "text": emb["text"][texts]}, {"i2t": i2t, "t2i": i2t.T}))
    return {key: sum(p[key] for p in per_fold) / folds for key in per_fold[0]}


def test_folds_against_a_computation_by_hand():
    from xmcore.data import Split

    owner = np.repeat(np.arange(13), 3)  # 13 images, 3 captions each; 3 folds of 4 leave the last image out
    split = Split(("image", "text"), {"image": list(range(13)), "text": list(range(39))}, owner)
    g = torch.Generator().manual_seed(5)
    image = torch.randn(13, 8, generator=g)
    emb = {"image": image, "text": image[owner] + 1.5 * torch.randn(39, 8, generator=g)}
    ours = evaluate_folds(emb, split, metrics(), folds=3, fold_size=4)
    expected = fold_references(emb, owner, 3, 4)
    for key, value in expected.items():
        assert ours[f"fold/{key}"] == pytest.approx(value, abs=1e-6), key
    assert ours["fold/rsum"] == pytest.approx(sum(v for k, v in ours.items() if "/R@" in k))
    whole = evaluate(emb, split, metrics())[1]
    assert ours["fold/t2i/R@1"] > whole["t2i/R@1"]  # a fold's gallery is a third of the split's: easier
    with pytest.raises(ValueError, match="4 folds of 4 need 16 image items; the split has 13"):
        evaluate_folds(emb, split, metrics(), folds=4, fold_size=4)


def test_a_run_reports_the_folds_mean_beside_the_full_split(tmp_path, capfd):
    out = tmp_path / "run"
    tiny = [*TINY_TRAINER, "data.train=16", "data.val=4", "data.test=9", "data.image_size=32"]
    result = cli(capfd, "run", QUICKSTART, *tiny, "eval.folds=2", "eval.fold_size=4", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    values = json.loads((out / "metrics.json").read_text())
    assert "i2t/R@1" in values and "fold/i2t/R@1" in values and "fold/rsum" in values
    saved = np.load(out / "embeddings.npz")
    emb = {m: torch.from_numpy(saved[m]) for m in ("image", "text")}
    expected = fold_references(emb, saved["text_to_image"], 2, 4)
    for key, value in expected.items():
        assert values[f"fold/{key}"] == pytest.approx(value, abs=1e-6), key
    table = (out / "metrics.md").read_text()
    assert "| fold/i2t |" in table and "| fold/t2i |" in table and "**fold/rsum**" in table
    assert "| fold/i2t |" in result.stdout

    too_many = cli(capfd, "run", QUICKSTART, *tiny, "eval.folds=5", "eval.fold_size=2", "--out", tmp_path / "again")
    assert too_many.returncode == 2
    assert "eval.folds: 5 folds of 2 images need 10, but split 'test' of dataset 'shapes'" in too_many.stderr
    assert "has 9" in too_many.stderr and not (tmp_path / "again" / "checkpoints").exists()


def _shards(root):
    from conftest import write_shards

    write_shards(root / "shards", shards=3, per_shard=4)
    return ["data.name=webdataset", f"data.train={root / 'shards' / 'train-{000000..000001}.tar'}",
            f"data.test={root / 'shards' / 'train-000002.tar'}", "data.val=null"]


def _hub(root):
    from hf_fixtures import write_hub_folder

    return ["data.name=hf", f"data.path={write_hub_folder(root / 'hub')}", "data.label_column=label"]


@pytest.mark.parametrize("dataset", [_shards, _hub], ids=["webdataset-cls", "hf-label_column"])
def test_label_relevance_for_other_labelled_datasets(dataset, tmp_path):
    overrides = dataset(tmp_path)
    auto = build_data(validate(load_recipe(QUICKSTART, overrides), PLUGINS), tmp_path).splits["test"]
    by_class = build_data(validate(load_recipe(QUICKSTART, [*overrides, "eval.relevance=label"]), PLUGINS), tmp_path)
    assert auto.relevance == "owner" and auto.labels is not None  # labels kept, relevance by owner as before
    for split in by_class.splits.values():
        assert split.relevance == "label"
        assert split.groups("image").tolist() == split.labels.tolist()
        assert split.groups("text").tolist() == split.labels[split.owner].tolist()
