"""The ``hf`` dataset: Hugging Face datasets files (Parquet, Arrow, save_to_disk folders, Hub downloads), read
with pyarrow; the files are written here with pyarrow in datasets' layouts, and with the datasets library
itself where it is installed."""

import json

import numpy as np
import pytest

from conftest import COLOURS, cli, write_image
from hf_fixtures import (
    CLASSES, FEATURES, png, rows, write_hub_folder, write_parquet, write_saved_dataset, write_saved_dataset_dict,
)
from xmcore.data import clean_split, materialize
from xmcore.errors import XmcoreError
from xmcore.registry import BuildContext

pytest.importorskip("pyarrow")


def read(plugins, root, **params):
    component = plugins["dataset"].get("hf")
    return component.build(component.params.model_validate(params), BuildContext(base_dir=root))


def colour(item):
    """The colour name of a one-colour fixture picture."""
    pixel = materialize(item).getpixel((2, 2))
    return next(name for name, rgb in COLOURS.items() if all(abs(a - b) < 4 for a, b in zip(pixel, rgb)))


def check_hub_splits(data):
    assert {name: len(s.items["image"]) for name, s in data.splits.items()} == {"train": 6, "val": 2, "test": 3}
    for split in data.splits.values():
        assert len(split.items["text"]) == 2 * len(split.items["image"])  # two captions each
        for k, image in enumerate(split.items["image"]):
            name = colour(image)
            captions = [t for t, o in zip(split.items["text"], split.owner) if o == k]
            assert all(name in c for c in captions) and len(captions) == 2
            assert data.extras["label_names"][split.labels[k]] == name  # ClassLabel names kept
    assert data.extras["label_names"] == CLASSES


@pytest.mark.parametrize("layout", ["hub-parquet-folder", "save_to_disk-DatasetDict"])
def test_split_layouts_are_read_with_their_splits_images_captions_and_class_names(plugins, tmp_path, layout):
    root = write_hub_folder(tmp_path / "hub") if layout.startswith("hub") else write_saved_dataset_dict(tmp_path / "saved")
    check_hub_splits(read(plugins, tmp_path, path=root.name, label_column="label"))


def test_one_file_or_a_saved_dataset_without_splits_is_split_by_ratios(plugins, tmp_path):
    write_parquet(tmp_path / "all.parquet", rows(20))
    write_saved_dataset(tmp_path / "saved", rows(20))
    first = read(plugins, tmp_path, path="all.parquet", split_ratios=(0.5, 0.25, 0.25), seed=3)
    second = read(plugins, tmp_path, path="saved", split_ratios=(0.5, 0.25, 0.25), seed=3)
    assert {n: len(s.items["image"]) for n, s in first.splits.items()} == {"train": 10, "val": 5, "test": 5}
    for name in first.splits:  # the same rows, whether Parquet or Arrow
        assert first.splits[name].items["text"] == second.splits[name].items["text"]
        assert [colour(i) for i in first.splits[name].items["image"]] == [colour(i) for i in second.splits[name].items["image"]]
    assert first.splits["train"].labels is None  # no label_column


def test_a_hub_dataset_with_a_train_split_only_is_split_by_ratios(plugins, tmp_path):
    write_parquet(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet", rows(10))
    data = read(plugins, tmp_path, path="hub")
    assert sorted(data.splits) == ["test", "train", "val"] and sum(len(s.items["image"]) for s in data.splits.values()) == 10


def test_image_cells_may_be_bytes_paths_or_image_features_with_a_path(plugins, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_image(tmp_path / "pics" / "g.png", "green")
    write_image(tmp_path / "pics" / "y.png", "yellow")
    cases = {
        "bytes": pa.table({"img": [png("red"), png("blue")], "text": ["red one", "blue one"]}),
        "paths": pa.table({"img": ["pics/g.png", "pics/y.png"], "text": ["green one", "yellow one"]}),
        "features": pa.table({"img": [{"bytes": None, "path": "pics/g.png"}, {"bytes": png("blue"), "path": "x.png"}],
                              "text": ["green one", "blue one"]}),
    }
    for name, t in cases.items():
        pq.write_table(t, tmp_path / f"{name}.parquet")
        data = read(plugins, tmp_path, path=f"{name}.parquet", image_column="img", caption_column="text",
                    split_ratios=(1, 0, 0))
        (split,) = data.splits.values()
        assert [colour(i) + " one" for i in split.items["image"]] == split.items["text"], name


def test_rows_of_one_image_are_grouped_by_id_column_or_path(plugins, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_image(tmp_path / "r.png", "red")
    write_image(tmp_path / "b.png", "blue")
    pq.write_table(pa.table({"image": ["r.png", "b.png", "r.png"], "caption": ["red", "blue", "crimson"]}), tmp_path / "p.parquet")
    (split,) = read(plugins, tmp_path, path="p.parquet", split_ratios=(1, 0, 0)).splits.values()
    assert len(split.items["image"]) == 2 and sorted(split.items["text"]) == ["blue", "crimson", "red"]
    assert split.owner.tolist().count(split.owner[split.items["text"].index("red")]) == 2

    pq.write_table(pa.table({"image": [png("red"), png("blue"), png("red")], "caption": ["red", "blue", "crimson"],
                             "image_id": [7, 8, 7]}), tmp_path / "b.parquet")
    (split,) = read(plugins, tmp_path, path="b.parquet", id_column="image_id", split_ratios=(1, 0, 0)).splits.values()
    assert len(split.items["image"]) == 2 and split.items["text"] == ["red", "crimson", "blue"]
    assert split.owner.tolist() == [0, 0, 1]
    (split,) = read(plugins, tmp_path, path="b.parquet", split_ratios=(1, 0, 0)).splits.values()
    assert len(split.items["image"]) == 3  # bytes without an id: each row its own image


def test_split_column_and_split_mapping(plugins, tmp_path, capfd):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = rows(8)
    t = pa.table({"image": [r["image"] for r in records], "sentences": [r["caption"][0] for r in records],
                  "split": ["train", "train", "train", "restval", "val", "test", "test", "extra"]})
    pq.write_table(t, tmp_path / "karpathy.parquet")
    data = read(plugins, tmp_path, path="karpathy.parquet", caption_column="sentences", split_column="split")
    assert {n: len(s.items["image"]) for n, s in data.splits.items()} == {"train": 3, "val": 1, "test": 2}
    assert "left out split 'extra' (1 rows), 'restval' (1 rows)" in capfd.readouterr().err
    # the mapping picks the splits (restval trains too, as the Karpathy splits' users do... with their own name)
    data = read(plugins, tmp_path, path="karpathy.parquet", caption_column="sentences", split_column="split",
                splits={"train": "restval", "val": "val", "test": "test"})
    assert {n: len(s.items["image"]) for n, s in data.splits.items()} == {"train": 1, "val": 1, "test": 2}

    write_hub_folder(tmp_path / "hub")
    data = read(plugins, tmp_path, path="hub", splits={"train": "train", "test": "validation"})
    assert {n: len(s.items["image"]) for n, s in data.splits.items()} == {"train": 6, "test": 2}


def test_a_row_without_an_image_is_skipped_with_its_reason(plugins, tmp_path):
    records = rows(4)
    records[2]["image"] = {"bytes": None, "path": None}
    write_parquet(tmp_path / "p.parquet", records)
    (split,) = read(plugins, tmp_path, path="p.parquet", split_ratios=(1, 0, 0)).splits.values()
    cleaned, report = clean_split(split)
    assert len(cleaned.items["image"]) == 3
    (problem,) = report["problems"]
    assert problem["item"].endswith("p.parquet:row 2") and "no image in row 2" in problem["reason"]


def test_an_image_feature_whose_path_a_symbolic_link_leads_out_of_the_folder_is_refused(plugins, tmp_path):
    """As for path columns and every dataset of files: a datasets Image feature without bytes whose path is
    reached through a symbolic link out of the table's folder is skipped and reported, and never opened; a
    link that stays inside is fine."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data, outside = tmp_path / "data", tmp_path / "private"
    write_image(outside / "secret.png", "red")
    write_image(data / "pics" / "g.png", "green")
    (data / "pics" / "leak.png").symlink_to(outside / "secret.png")
    (data / "pics" / "alias.png").symlink_to(data / "pics" / "g.png")
    (data / "shared").symlink_to(outside, target_is_directory=True)
    cells = [{"bytes": None, "path": p} for p in ("pics/g.png", "pics/leak.png", "shared/secret.png", "pics/alias.png")]
    pq.write_table(pa.table({"image": cells, "caption": ["green", "leak", "folder leak", "alias"]}), data / "p.parquet")
    (split,) = read(plugins, data, path="p.parquet", split_ratios=(1, 0, 0)).splits.values()
    cleaned, report = clean_split(split)
    assert sorted(colour(image) for image in cleaned.items["image"]) == ["green", "green"]
    reasons = {p["item"].rsplit(":", 1)[1]: p["reason"] for p in report["problems"]}
    assert set(reasons) == {"row 1", "row 2"}, report
    assert all("symbolic link out of the data folder" in r for r in reasons.values()), reasons
    leak = next(image for image in split.items["image"] if str(image).endswith("row 1"))
    with pytest.raises(PermissionError, match="symbolic link out of the data folder"):
        materialize(leak)


def test_images_are_read_in_dataloader_workers(plugins, tmp_path):
    """Items reach worker processes (pickled or forked) and read their row groups there."""
    import torch

    from xmcore.data import ItemDataset

    write_hub_folder(tmp_path / "hub")
    images = read(plugins, tmp_path, path="hub").splits["train"].items["image"]
    dataset = ItemDataset(images, lambda im: torch.tensor(np.asarray(im)[2, 2]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=1, collate_fn=lambda b: b)
    pixels = [tuple(x["item"].tolist()) for batch in loader for x in batch]
    assert pixels == [COLOURS[colour(i)] for i in images]


@pytest.mark.parametrize("make, params, message", [
    (lambda root: None, {"path": "nothing"}, "data.path: no such file or folder"),
    (lambda root: (root / "d").mkdir(), {"path": "d"}, "holds no .parquet or .arrow files"),
    (lambda root: (root / "x.csv").write_text("a"), {"path": "x.csv"}, "is not a .parquet or .arrow file"),
    (lambda root: (root / "x.parquet").write_bytes(b"not parquet"), {"path": "x.parquet"}, "x.parquet: not a readable Parquet file"),
    (lambda root: write_parquet(root / "p.parquet", rows(3)), {"path": "p.parquet", "caption_column": "text"},
     "p.parquet: no column 'text' (data.caption_column); its columns: image, caption, label; set data.caption_column to match"),
    (lambda root: write_parquet(root / "p.parquet", rows(3)), {"path": "p.parquet", "image_column": "label"},
     "p.parquet: column 'label' (data.image_column) holds int64; expected image bytes, a path, or a datasets Image feature"),
    (lambda root: write_parquet(root / "p.parquet", rows(3)), {"path": "p.parquet", "caption_column": "label"},
     "column 'label' (data.caption_column) holds int64; expected a string or a list of strings"),
    (lambda root: (write_parquet(root / "h" / "train.parquet", rows(2)), write_parquet(root / "h" / "more.parquet", rows(2))),
     {"path": "h"}, "more.parquet names no split, unlike"),
    (lambda root: write_parquet(root / "h" / "test-0.parquet", rows(2)), {"path": "h"},
     "no rows for the train split; the data's splits are test: choose with data.splits"),
    (lambda root: (write_saved_dataset(root / "s", rows(2)), (root / "s" / "state.json").write_text("{")), {"path": "s"},
     "state.json: not valid JSON"),
    (lambda root: (write_saved_dataset(root / "s", rows(2)), (root / "s" / "data-00000-of-00001.arrow").unlink()),
     {"path": "s"}, "state.json: lists data-00000-of-00001.arrow, which is not in"),
])
def test_bad_input_is_a_clear_error_naming_the_file_and_key(plugins, tmp_path, make, params, message):
    make(tmp_path)
    with pytest.raises(XmcoreError) as error:
        read(plugins, tmp_path, **params)
    assert message in str(error.value)


def test_files_written_by_the_datasets_library(plugins, tmp_path):
    """The real library's save_to_disk (a DatasetDict, a Dataset) and to_parquet, with bytes and path images."""
    datasets = pytest.importorskip("datasets")

    write_image(tmp_path / "pics" / "g.png", "green")
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string")),
                                  "label": datasets.ClassLabel(names=CLASSES)})

    def dataset(offset):
        return datasets.Dataset.from_dict({
            "image": [{"bytes": png("red"), "path": None}, str(tmp_path / "pics" / "g.png"), {"bytes": png("blue"), "path": None}],
            "caption": [[f"red {offset}", "crimson"], [f"green {offset}"], [f"blue {offset}"]], "label": [0, 1, 2]},
            features=features)

    splits = datasets.DatasetDict({"train": dataset(0), "validation": dataset(1), "test": dataset(2)})
    splits.save_to_disk(str(tmp_path / "dict"))
    splits["train"].save_to_disk(str(tmp_path / "train-only"))
    splits["test"].to_parquet(str(tmp_path / "test.parquet"))
    data = read(plugins, tmp_path, path="dict", label_column="label")
    assert {n: len(s.items["image"]) for n, s in data.splits.items()} == {"train": 3, "val": 3, "test": 3}
    assert data.splits["val"].items["text"] == ["red 1", "crimson", "green 1", "blue 1"]
    assert [colour(i) for i in data.splits["test"].items["image"]] == ["red", "green", "blue"]
    assert data.splits["test"].labels.tolist() == [0, 1, 2] and data.extras["label_names"] == CLASSES
    for path in ("train-only", "test.parquet"):
        data = read(plugins, tmp_path, path=path, split_ratios=(1, 0, 0))
        assert [colour(i) for i in data.splits["train"].items["image"]] == ["red", "green", "blue"]


def test_a_run_trains_and_evaluates_on_hf_files(plugins, tmp_path, capfd):
    from conftest import ROOT
    from xmcore.testing import tiny_overrides

    write_hub_folder(tmp_path / "hub", counts=(12, 4, 8))
    recipe = ROOT / "recipes" / "quickstart.yaml"
    data = ["data.name=hf", f"data.path={tmp_path / 'hub'}", "data.label_column=label"]
    out = tmp_path / "run"
    result = cli(capfd, "run", recipe, *tiny_overrides(recipe, plugins, data), *data, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "data_report.json").read_text())
    assert report["source"].startswith("dataset 'hf' (hf ") and report["splits"]["test"]["used"]["image"] == 8
    assert "i2t/R@1" in json.loads((out / "metrics.json").read_text())
    # an index keeps a copy of each picture that lives inside a Parquet file, and shows it
    index = cli(capfd, "index", out, "--out", tmp_path / "index", "--split", "test")
    assert index.returncode == 0, index.stderr[-3000:]
    images = [json.loads(line) for line in (tmp_path / "index" / "metadata" / "image.jsonl").read_text().splitlines()]
    assert len(images) == 8 and all((tmp_path / "index" / m["media"]).is_file() for m in images)
    found = cli(capfd, "search", tmp_path / "index", "--text", "a red square", "-k", "2", "--json")
    assert found.returncode == 0 and len(json.loads(found.stdout)) == 2
