"""Contract tests, parametrized over every registered component: a new plugin is tested by these."""

import shutil

import pytest

from audio_fixtures import write_audiocaps, write_audiofolder, write_clotho
from benchmark_fixtures import write_pascal_sentences, write_wikipedia
from conftest import write_csv, write_image, write_karpathy, write_shards
from hf_fixtures import write_hub_folder
from xmcore.plugins import load_plugins
from xmcore.registry import BuildContext
from xmcore.testing import (
    check_augmentation, check_dataset, check_encoder, check_explainer, check_fusion, check_loss, check_metric,
    component_test_params,
)

PLUGINS = load_plugins()


def _jsonl(root):
    import json

    for name, colour in (("x.png", "red"), ("y.png", "blue"), ("z.png", "green")):
        write_image(root / name, colour)
    rows = [("x.png", "a red square", "train"), ("x.png", "crimson", "train"), ("y.png", "a blue square", "val"),
            ("z.png", "a green square", "test")]
    (root / "d.jsonl").write_text("".join(json.dumps({"filepath": p, "title": t, "split": s}) + "\n" for p, t, s in rows))
    return {"path": "d.jsonl", "split_column": "split"}


def _imagefolder(root):
    for split in ("train", "val", "test"):
        for colour in ("red", "blue"):
            write_image(root / "folder" / split / f"{colour}_thing" / "0.png", colour)
    return {"root": "folder"}


def _synonyms(root):
    (root / "syn.txt").write_text("circle ring disc\nsquare box\nred crimson\n")
    return {"synonyms": "syn.txt"}


# Components that read files give no test_params (None): they are checked on the fixtures test_datasets.py uses.
FILE_FIXTURES = {
    ("dataset", "csv"): lambda root: (write_csv(root), {"path": "data.tsv", "split_column": "split"})[1],
    ("dataset", "jsonl"): _jsonl,
    ("dataset", "karpathy"): lambda root: (write_karpathy(root), {"annotations": "dataset_flickr30k.json",
                                                                  "image_root": "images"})[1],
    ("dataset", "imagefolder"): _imagefolder,
    ("dataset", "webdataset"): lambda root: (write_shards(root / "shards", shards=3, per_shard=4), {
        "train": "shards/train-{000000..000001}.tar", "test": "shards/train-000002.tar"})[1],
    ("dataset", "hf"): lambda root: {"path": str(write_hub_folder(root / "hub")), "label_column": "label"},
    ("dataset", "wikipedia"): lambda root: {"root": str(write_wikipedia(root / "wikipedia")), "val_from_test": 3},
    ("dataset", "pascal-sentences"): lambda root: {"root": str(write_pascal_sentences(root / "pascal"))},
    ("augmentation", "synonym-replacement"): _synonyms,
    ("dataset", "audiofolder"): lambda root: {"root": str(write_audiofolder(root / "folder"))},
    ("dataset", "clotho"): lambda root: {"root": str(write_clotho(root / "clotho"))},
    ("dataset", "audiocaps"): lambda root: {"root": str(write_audiocaps(root / "audiocaps"))},
}


def fixture_params(component, root):
    """The parameters of a file-based component, its files written under ``root``; {} for the others."""
    key = (component.kind, component.name)
    return FILE_FIXTURES[key](root) if key in FILE_FIXTURES and component_test_params(component) is None else {}


def cases(kind, per_modality=False):
    out = []
    for c in PLUGINS[kind]:
        mods = c.modalities or ("image", "text")
        for m in mods if per_modality else [None]:
            ident = f"{c.name}-{m}" if m else c.name
            untestable = component_test_params(c) is None and (kind, c.name) not in FILE_FIXTURES
            marks = [pytest.mark.skip(reason="the component gives no test parameters here (it needs files or models absent on this machine)")] if untestable else []
            out.append(pytest.param(c, m, id=ident, marks=marks))
    return out


def test_every_first_party_component_is_tested_here():
    """A skip here means an optional package is missing, never a component of ours without a fixture."""
    untested = [(kind, c.name) for kind in ("dataset", "augmentation", "encoder", "fusion", "loss", "metric", "explainer")
                for c in PLUGINS[kind] if c.plugin.startswith("xmcore-") and component_test_params(c) is None
                and (kind, c.name) not in FILE_FIXTURES and c.name != "sentence-transformers"
                and not (c.name == "spoken-shapes" and shutil.which("espeak-ng") is None)]  # a Debian package
    assert untested == []


@pytest.mark.parametrize("component, modality", cases("encoder", per_modality=True))
def test_encoder_contract(component, modality):
    check_encoder(component, modality)


@pytest.mark.parametrize("component, modality", cases("fusion"))
def test_fusion_contract(component, modality):
    check_fusion(component)


@pytest.mark.parametrize("component, modality", cases("loss"))
def test_loss_contract(component, modality):
    check_loss(component)


@pytest.mark.parametrize("component, modality", cases("metric"))
def test_metric_contract(component, modality):
    check_metric(component)


@pytest.mark.parametrize("component, modality", cases("dataset"))
def test_dataset_contract(component, modality, tmp_path):
    check_dataset(component, BuildContext(base_dir=tmp_path), **fixture_params(component, tmp_path))


@pytest.mark.parametrize("component, modality", cases("augmentation", per_modality=True))
def test_augmentation_contract(component, modality, tmp_path):
    check_augmentation(component, modality, BuildContext(base_dir=tmp_path), **fixture_params(component, tmp_path))


@pytest.mark.parametrize("component, modality", cases("explainer", per_modality=True))
def test_explainer_contract(component, modality):
    check_explainer(component, modality)


@pytest.mark.parametrize("kind", ["dataset", "encoder", "fusion", "loss", "metric", "explainer"])
def test_every_kind_has_components(kind):
    assert len(PLUGINS[kind]) > 0


@pytest.mark.parametrize("kind", ["dataset", "augmentation", "encoder", "fusion", "loss", "metric", "explainer"])
def test_every_parameter_is_documented(kind):
    for c in PLUGINS[kind]:
        assert c.help, f"{kind} '{c.name}' has no help line"
        for p in c.describe_params():
            assert p["help"], f"{kind} '{c.name}' parameter '{p['name']}' has no description"
