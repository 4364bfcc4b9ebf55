"""File-based datasets in their real formats, and the handling of bad items."""

import json

import numpy as np
import pytest

from conftest import ROOT, cli, write_csv, write_image, write_karpathy, write_shards, write_truncated_jpeg
from xmcore.data import clean_split
from xmcore.errors import XmcoreError
from xmcore.plugins import load_plugins
from xmcore.registry import BuildContext
from xmcore.testing import TINY_TRAINER

PLUGINS = load_plugins()


def build(name, base_dir, **params):
    component = PLUGINS["dataset"].get(name)
    return component.build(component.params.model_validate(params), BuildContext(base_dir=base_dir))


def test_csv_groups_rows_by_image_and_keeps_labels_and_splits(tmp_path):
    write_csv(tmp_path)
    data = build("csv", tmp_path, path="data.tsv", label_column="colour", split_column="split")
    assert set(data.splits) == {"train", "val", "test"}
    train = data.splits["train"]
    assert [str(p.path.name) for p in train.items["image"]] == ["a.png", "b.png"]
    assert train.items["text"] == ["a red square", "one red box", "a green square"]
    assert train.owner.tolist() == [0, 0, 1]
    assert data.extras["label_names"] == ["blue", "green", "red", "yellow"]
    assert train.labels.tolist() == [2, 1]
    assert train.items["image"][0].load().size == (24, 24)


def test_csv_with_comma_separator_and_seeded_split(tmp_path):
    rows = [(f"img/{i}.png", f"caption {i}", "red", "") for i in range(20)]
    write_csv(tmp_path, sep=",", rows=rows)
    data = build("csv", tmp_path, path="data.tsv", separator=",", split_ratios=(0.5, 0.25, 0.25), seed=3)
    sizes = {k: len(v.items["image"]) for k, v in data.splits.items()}
    assert sizes == {"train": 10, "val": 5, "test": 5}
    again = build("csv", tmp_path, path="data.tsv", separator=",", split_ratios=(0.5, 0.25, 0.25), seed=3)
    assert again.splits["test"].items["text"] == data.splits["test"].items["text"]


def test_csv_missing_column_names_the_columns_found(tmp_path):
    write_csv(tmp_path)
    with pytest.raises(XmcoreError, match=r"no column 'caption' \(separator tab\); columns found: filepath, title"):
        build("csv", tmp_path, path="data.tsv", caption_column="caption")


def test_jsonl(tmp_path):
    write_image(tmp_path / "x.png", "red")
    write_image(tmp_path / "y.png", "blue")
    (tmp_path / "d.jsonl").write_text(
        "\n".join(json.dumps({"filepath": p, "title": t, "split": s}) for p, t, s in
                  [("x.png", "red", "train"), ("x.png", "crimson", "train"), ("y.png", "blue", "test")]) + "\n"
    )
    data = build("jsonl", tmp_path, path="d.jsonl", split_column="split")
    assert data.splits["train"].items["text"] == ["red", "crimson"]
    assert len(data.splits["test"].items["image"]) == 1
    (tmp_path / "bad.jsonl").write_text('{"filepath": "x.png", "title": "ok"}\n{not json\n')
    with pytest.raises(XmcoreError, match="bad.jsonl line 2: not valid JSON"):
        build("jsonl", tmp_path, path="bad.jsonl")


def test_karpathy_split_file(tmp_path):
    write_karpathy(tmp_path)
    data = build("karpathy", tmp_path, annotations="dataset_flickr30k.json", image_root="images")
    assert {k: len(v.items["image"]) for k, v in data.splits.items()} == {"train": 6, "val": 2, "test": 3}
    test = data.splits["test"]
    assert len(test.items["text"]) == 15 and test.owner.tolist() == sorted(test.owner.tolist())
    assert test.items["image"][0].path == tmp_path / "images" / "sub" / "00008.jpg"
    kept_apart = build("karpathy", tmp_path, annotations="dataset_flickr30k.json", image_root="images",
                       restval_to_train=False)
    assert len(kept_apart.splits["restval"].items["image"]) == 1


def test_imagefolder_is_class_level(tmp_path):
    for split in ("train", "test"):
        for colour in ("red", "blue"):
            for i in range(2):
                write_image(tmp_path / split / f"{colour}_thing" / f"{i}.png", colour)
    data = build("imagefolder", tmp_path, root=".", templates=["a photo of a {label}", "a {label}"])
    test = data.splits["test"]
    assert test.relevance == "label" and test.labels.tolist() == [0, 0, 1, 1]
    assert test.items["text"][:2] == ["a photo of a blue thing", "a blue thing"]
    assert test.groups("text").tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_clean_split_skips_and_reports(tmp_path):
    write_csv(tmp_path, rows=[
        ("img/a.png", "a red square", "red", ""),
        ("img/gone.png", "never drawn", "none", ""),
        ("img/b.png", "   ", "green", ""),
        ("img/t.jpg", "truncated", "none", ""),
        ("img/c.png", "blue", "blue", ""),
    ])
    write_truncated_jpeg(tmp_path / "img" / "t.jpg")
    data = build("csv", tmp_path, path="data.tsv", split_ratios=(1.0, 0.0, 0.0))
    cleaned, report = clean_split(data.splits["train"])
    assert sorted(p.path.name for p in cleaned.items["image"]) == ["a.png", "c.png"]
    assert report["used"] == {"image": 2, "text": 2}
    assert report["skipped"] == {"image": 3, "text": 1}
    assert report["reasons"] == {"missing file": 1, "empty caption": 1, "unreadable image": 1, "no usable text": 1}
    assert np.all(cleaned.owner < 2)


def bad_csv_recipe(tmp_path, strict=False, only_bad_test=False):
    rows = [(f"img/{i}.png", f"a red square {i}", "red", "train") for i in range(6)]
    rows += [("img/t0.png", "a blue square", "blue", "test"), ("img/t1.png", "a green square", "green", "test")]
    rows += [("img/missing.png", "lost", "none", "train"), ("img/t0.png", "", "blue", "test")]
    if only_bad_test:
        rows = [r for r in rows if r[3] == "train"] + [("img/lost-too.png", "lost", "none", "test")]
    write_csv(tmp_path, rows=rows)
    recipe = tmp_path / "r.yaml"
    recipe.write_text((ROOT / "recipes" / "quickstart.yaml").read_text())
    return recipe, [
        "data.name=csv", f"data.path={tmp_path / 'data.tsv'}", "data.split_column=split", f"data.strict={str(strict).lower()}",
        "data.batch_size=4", "encoders.image.img_size=32", *TINY_TRAINER,
    ]


def test_bad_items_are_skipped_with_one_warning_and_a_report(tmp_path, capfd):
    recipe, overrides = bad_csv_recipe(tmp_path)
    result = cli(capfd, "run", recipe, *overrides, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "skipped" in line and "bad items" in line]
    assert len(warnings) == 1 and "missing.png (missing file)" in warnings[0]
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["splits"]["train"]["skipped"] == {"image": 1, "text": 0}
    assert report["splits"]["test"]["reasons"] == {"empty caption": 1}
    assert report["splits"]["test"]["used"] == {"image": 2, "text": 2}


def test_strict_mode_stops_before_training(tmp_path, capfd):
    recipe, overrides = bad_csv_recipe(tmp_path, strict=True)
    result = cli(capfd, "run", recipe, *overrides, "--out", tmp_path / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "2 bad items and data.strict is true" in result.stderr
    assert "missing.png: missing file" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_split_with_no_usable_items_is_an_error(tmp_path, capfd):
    recipe, overrides = bad_csv_recipe(tmp_path, only_bad_test=True)
    result = cli(capfd, "run", recipe, *overrides, "--out", tmp_path / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "split 'test' has no usable image items" in result.stderr and "data.tsv" in result.stderr


def test_webdataset_shards_with_brace_patterns(tmp_path):
    write_shards(tmp_path / "shards", shards=3, per_shard=4)
    data = build("webdataset", tmp_path, train="shards/train-{000000..000001}.tar", test="shards/train-000002.tar")
    train, test = data.splits["train"], data.splits["test"]
    assert len(train.items["image"]) == 8 and len(test.items["image"]) == 4
    assert test.items["text"][0] == "a red picture 8"
    assert test.items["image"][0].load().size == (20, 20)
    assert data.extras["label_names"] == ["blue", "green", "red", "yellow"]
    assert test.labels.tolist() == [2, 1, 0, 3]

    split = build("webdataset", tmp_path, shards="shards/train-{000000..000002}.tar", split_ratios=(0.5, 0.25, 0.25))
    assert {k: len(v.items["text"]) for k, v in split.splits.items()} == {"train": 6, "val": 3, "test": 3}


def test_webdataset_bad_samples_and_shards(tmp_path):
    write_shards(tmp_path / "shards", shards=1, per_shard=3, orphan=True)
    data = build("webdataset", tmp_path, train="shards/train-000000.tar", test="shards/train-000000.tar")
    cleaned, report = clean_split(data.splits["train"])
    assert report["reasons"] == {"sample without image": 1} and len(cleaned.items["image"]) == 2
    with pytest.raises(XmcoreError, match="do not exist"):
        build("webdataset", tmp_path, train="shards/train-{000000..000004}.tar", test="shards/train-000000.tar")
    (tmp_path / "gz.tar").write_bytes(b"\x1f\x8b" + b"0" * 600)
    with pytest.raises(XmcoreError, match="not an uncompressed tar shard"):
        build("webdataset", tmp_path, train="gz.tar", test="gz.tar")


def test_data_inspect_cli(tmp_path, capfd):
    recipe, overrides = bad_csv_recipe(tmp_path)
    grid = tmp_path / "grid.png"
    result = cli(capfd, "data", "inspect", recipe, *overrides, "--grid", grid)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "[train]" in out and "[test]" in out
    assert "image items: 6   text items: 6" in out
    assert "text per image: min 1, mean 1.00, max 1" in out
    assert "problems: 1 items skipped (1 missing file)" in out and "missing.png: missing file" in out
    assert "e.g. " in out and "a red square 0" in out
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = cli(capfd, "data", "inspect", recipe, *overrides, "--grid", grid, "--split", "nope")
    assert bad.returncode == 2 and "no split 'nope'" in bad.stderr and "Traceback" not in bad.stderr
