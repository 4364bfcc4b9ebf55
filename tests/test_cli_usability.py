"""What a new user meets in the first hour: options and overrides in any order, one exit-status rule,
clear errors for a folder given as a recipe and for unknown cache keys, sweeps with fixed keys,
readable comparisons, and paths typed on the command line resolved against the working directory."""

import json
import shutil
import warnings

import pytest
import yaml

from conftest import ROOT
from xmcore.cli import main, parse_args

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
TINY_DATA = ["data.train=16", "data.val=4", "data.test=8", "data.image_size=32"]


def run(capsys, *args):
    """``xmcore ARGS`` in this process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


# --------------------------------------------------------------------------- 1: options before overrides


@pytest.mark.parametrize(
    "argv, dest, expected",
    [
        (["run", "R", "--out", "runA", "trainer.max_steps=2"], "overrides", ["trainer.max_steps=2"]),
        (["run", "R", "a=1", "--out", "x", "b=2", "--resume", "c=3"], "overrides", ["a=1", "b=2", "c=3"]),
        (["validate", "R", "--print", "k=v"], "overrides", ["k=v"]),
        (["data", "inspect", "R", "--grid", "g.png", "k=v"], "overrides", ["k=v"]),
        (["evaluate", "RUN", "--out", "x", "k=v"], "overrides", ["k=v"]),
        (["sweep", "R", "--out", "d", "k=v"], "axes", ["k=v"]),
        (["sweep", "R", "a=1,2", "--out", "d", "b=3,4"], "axes", ["a=1,2", "b=3,4"]),
    ],
)
def test_overrides_may_follow_options_in_every_command(argv, dest, expected):
    assert getattr(parse_args(argv), dest) == expected


def test_words_that_are_not_overrides_are_still_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["run", "R", "--out", "x", "stray"])
    assert exc.value.code == 2 and "unrecognized arguments: stray" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a command without overrides takes no key=value words
        parse_args(["search", "I", "--text", "x", "k=v"])


def test_validate_and_inspect_apply_overrides_given_after_options(capsys, tmp_path):
    code, out, _ = run(capsys, "validate", QUICKSTART, "--print", "fusion.name=linear")
    assert code == 0 and yaml.safe_load(out)["fusion"]["name"] == "linear"

    grid = tmp_path / "g.png"
    code, out, _ = run(capsys, "data", "inspect", QUICKSTART, "--grid", grid, *TINY_DATA)
    assert code == 0 and "image items: 16" in out and grid.is_file()


def test_evaluate_applies_overrides_given_after_its_out_option(capsys, tmp_path, trained_run):
    out = tmp_path / "ev"
    code, _, err = run(capsys, "evaluate", trained_run, "--out", out, "data.test=12", "eval.metrics=[{name: rank}]")
    assert code == 0, err
    assert yaml.safe_load((out / "recipe.yaml").read_text())["data"]["test"] == 12
    assert set(json.loads((out / "metrics.json").read_text())) == {"i2t/medR", "i2t/meanR", "t2i/medR", "t2i/meanR"}


# --------------------------------------------------------------------------- 5: exit status


def test_bad_input_exits_2_in_every_command(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [
        (["search", tmp_path / "no-index", "--text", "a red circle", "-k", "0"], "-k: expected 1 to 1000"),
        (["evaluate", "--embeddings", tmp_path / "missing.npz", "--out", tmp_path / "ev"], "missing.npz"),
        (["index", tmp_path, "--out", tmp_path / "idx"], "no recipe.yaml"),
        (["index", tmp_path, "--out", tmp_path / "idx", "--nbits", "20"], "--nbits: expected 1 to 16"),
        (["cache", "clear", "bogus-key", "--dir", tmp_path / "empty"], "no entry 'bogus-key'"),
        (["validate", QUICKSTART, "fusion.name=lineer"], "did you mean 'linear'"),
        (["report", tmp_path], "missing"),
        (["compare", tmp_path], "no metrics.json"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2 and message in err, (argv, code, err)


def test_a_bogus_split_is_refused_before_the_inspection_is_printed(capsys):
    code, out, err = run(capsys, "data", "inspect", QUICKSTART, *TINY_DATA, "--split", "bogus")
    assert code == 2 and "--split: the dataset has no split 'bogus'; it has: train, val, test" in err
    assert out == ""


def test_a_failure_while_running_exits_1(capsys, tmp_path, plugins):
    from xmcore.testing import tiny_overrides

    # valid input, but training diverges: the evaluation finds NaN embeddings
    code, _, err = run(capsys, "run", QUICKSTART, "--out", tmp_path / "run", *tiny_overrides(QUICKSTART, plugins),
                       "optimizer.lr=1e30", "optimizer.schedule=constant", "eval.every_n_epochs=0")
    assert code == 1 and "the model diverged" in err


# --------------------------------------------------------------------------- 6: a folder as the recipe


def test_a_folder_given_as_the_recipe_is_named_a_folder(capsys, tmp_path):
    code, _, err = run(capsys, "validate", ROOT / "recipes")
    assert code == 2 and "recipes: is a folder, not a recipe file" in err and "quickstart.yaml" in err
    assert "no such recipe file" not in err
    code, _, err = run(capsys, "run", tmp_path)
    assert code == 2 and "is a folder, not a recipe file" in err


# --------------------------------------------------------------------------- 7: cache clear


def test_cache_clear_refuses_an_unknown_key_and_names_the_closest(capsys, tmp_path):
    import torch

    from xmcore.cache import cached_features, list_entries
    from xmcore.features import encode_items
    from xmcore.plugins import load_plugins
    from xmcore.registry import BuildContext
    from xmcore.testing import build

    plugins = load_plugins()
    torch.manual_seed(0)
    enc = build(plugins["encoder"].get("timm"), BuildContext(modality="image")).eval()
    items = build(plugins["dataset"].get("shapes"), train=4, val=0, test=2, image_size=32).splits["train"].items["image"]
    cached_features(tmp_path, {"encoder": "timm"}, enc, items, lambda: encode_items(enc, items, batch_size=4))
    (key,) = [e["key"] for e in list_entries(tmp_path)]

    typo = key[:-1] + ("0" if key[-1] != "0" else "1")
    code, out, err = run(capsys, "cache", "clear", typo, "--dir", tmp_path)
    assert code == 2 and f"no entry '{typo}'" in err and f"closest keys: {key}" in err and "removed" not in out
    assert len(list_entries(tmp_path)) == 1  # nothing removed

    code, out, _ = run(capsys, "cache", "clear", key, "--dir", tmp_path)
    assert code == 0 and "removed 1 entries" in out and list_entries(tmp_path) == []


# --------------------------------------------------------------------------- 8: sweeps with fixed keys


def test_sweep_keys_with_one_value_are_fixed_not_axes(capsys, tmp_path, plugins):
    from xmcore.sweep import grid
    from xmcore.testing import tiny_overrides

    assert grid(["fusion.name=a,b", "trainer.max_steps=3"]) == (
        ["fusion.name"], [["fusion.name=a", "trainer.max_steps=3"], ["fusion.name=b", "trainer.max_steps=3"]])

    base = tmp_path / "tiny.yaml"
    code, shown, _ = run(capsys, "validate", QUICKSTART, *tiny_overrides(QUICKSTART, plugins), "--print")
    base.write_text(shown)
    out = tmp_path / "sweep"
    code, stdout, err = run(capsys, "sweep", base, "--out", out, "fusion.name=linear,nonlinear", "trainer.max_steps=1")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["fusion.name=linear", "fusion.name=nonlinear"]
    for cell in ("linear", "nonlinear"):  # the fixed key applies to every cell
        recipe = yaml.safe_load((out / f"fusion.name={cell}" / "recipe.yaml").read_text())
        assert recipe["trainer"]["max_steps"] == 1 and recipe["fusion"]["name"] == cell
    table = (out / "sweep.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| "))
    assert header.startswith("| fusion.name | runs | ") and "trainer.max_steps" not in header
    assert "In every cell: `trainer.max_steps=1`" in table
    assert "±" not in table.replace("mean ± std", "")  # one seed per setting: no spread to show
    summary = json.loads((out / "summary.json").read_text())
    assert [s["setting"] for s in summary] == [{"fusion.name": "linear"}, {"fusion.name": "nonlinear"}]
    assert all(m["std"] is None and m["n"] == 1 for s in summary for m in s["metrics"].values())
    assert json.loads((out / "sweep.json").read_text())["fixed"] == {"trainer.max_steps": "1"}
    medr = header.split(" | ").index("i2t/medR")
    row = next(line for line in table.splitlines() if line.startswith("| linear |")).split(" | ")
    assert "." not in row[medr]  # medR as a whole number, as in every other table


# --------------------------------------------------------------------------- 9: compare


def test_compare_lists_differing_keys_escapes_control_characters_and_formats_ranks(capsys, tmp_path, trained_run):
    from xmcore.evaluation import format_metric

    # the same run, with the recipe of another dataset: a csv manifest with a tab separator, other encoders
    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    recipe = yaml.safe_load((trained_run / "recipe.yaml").read_text())
    recipe["data"] = {**{k: recipe["data"][k] for k in ("batch_size", "num_workers", "strict", "caption_sampling")},
                      "name": "csv", "path": "train.tsv", "separator": "\t"}
    recipe["encoders"]["text"] = {"name": "lstm", "freeze": False, "embed_dim": 16, "hidden": 16}
    (other / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = run(capsys, "compare", trained_run, other, "--out", tmp_path / "cmp")
    assert code == 0, err
    assert not [w for w in caught if "Glyph" in str(w.message)]  # no control character reaches the chart
    assert "\t" not in out and "data.separator: (not set) (run); \\t (other)" in out
    header = out.splitlines()[0]
    assert "data." not in header and "encoders." not in header  # many keys differ: a list, not columns
    listed = [line for line in out.splitlines() if line.startswith("- ")]
    assert len(listed) > 3 and any(line.startswith("- data.name: shapes (run); csv (other)") for line in listed)

    metrics = json.loads((trained_run / "metrics.json").read_text())
    columns = header.split(" | ")
    row = out.splitlines()[2].split(" | ")
    assert row[columns.index("i2t/medR")] == format_metric(metrics["i2t/medR"], "i2t/medR")
    assert "." not in row[columns.index("i2t/medR")]
    assert (tmp_path / "cmp" / "comparison.md").read_text().count("- ") >= len(listed)

    # a single differing key stays a column (and the chart's legend)
    one = tmp_path / "one"
    shutil.copytree(trained_run, one)
    recipe = yaml.safe_load((trained_run / "recipe.yaml").read_text())
    recipe["seed"] = 7
    (one / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    code, out, _ = run(capsys, "compare", trained_run, one, "--out", tmp_path / "cmp1")
    assert code == 0 and out.splitlines()[0].startswith("| run | seed | ") and "- seed: 0 (run); 7 (one)" in out


# --------------------------------------------------------------------------- 4: relative paths


def write_photos(root, colours, per_split=2):
    """An imagefolder with split folders: ROOT/<split>/<colour>/<n>.png."""
    from conftest import write_image

    for split in ("train", "val", "test"):
        for colour in colours:
            for n in range(per_split):
                write_image(root / split / colour / f"{n}.png", colour)
    return root


def recipe_with_photos(folder):
    """quickstart, reading an imagefolder 'photos' written relative to the recipe's own folder."""
    recipe = yaml.safe_load(QUICKSTART.read_text())
    recipe["data"] = {"name": "imagefolder", "root": "photos", "batch_size": 4}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "r.yaml").write_text(yaml.safe_dump(recipe))
    write_photos(folder / "photos", ["red", "blue"])
    return folder / "r.yaml"


def test_recipe_paths_resolve_against_its_folder_and_typed_paths_against_the_working_directory(
        capsys, tmp_path, monkeypatch):
    recipe = recipe_with_photos(tmp_path / "recipes")
    work = tmp_path / "work"
    write_photos(work / "other", ["green", "yellow"])
    monkeypatch.chdir(work)  # the working directory is not the recipe's folder

    # written in the recipe: against the recipe's folder (from any working directory)
    code, out, err = run(capsys, "data", "inspect", "../recipes/r.yaml")
    assert code == 0, err
    assert str(tmp_path / "recipes" / "photos" / "train" / "red") in out

    # typed on the command line: against the working directory
    code, out, err = run(capsys, "data", "inspect", "../recipes/r.yaml", "data.root=other")
    assert code == 0, err
    assert str(work / "other" / "train") in out and str(tmp_path / "recipes") not in out
    code, out, _ = run(capsys, "validate", recipe, "--print", "data.root=other")
    assert yaml.safe_load(out)["data"]["root"] == str(work / "other")  # what a run stores: absolute
    code, _, err = run(capsys, "data", "inspect", recipe, "data.root=photos")  # not the recipe's photos
    assert code == 2 and f"data.root: no such folder {work / 'photos'}" in err

    # absolute and pkg:// paths are left alone; a name that is no path stays a name
    code, out, _ = run(capsys, "validate", recipe, "--print", f"data.root={work / 'other'}", "cache.dir=cache",
                       "encoders.text.name=sentence-transformers", "encoders.text.model=org/some-model")
    shown = yaml.safe_load(out)
    assert shown["data"]["root"] == str(work / "other") and shown["cache"]["dir"] == str(work / "cache")
    assert shown["encoders"]["text"]["model"] == "org/some-model"
    (work / "org" / "some-model").mkdir(parents=True)  # ... unless that folder exists here
    code, out, _ = run(capsys, "validate", recipe, "--print", "encoders.text.name=sentence-transformers",
                       "encoders.text.model=org/some-model", "encoders.image.checkpoint=pkg://xmcore/x.pth")
    shown = yaml.safe_load(out)
    assert shown["encoders"]["text"]["model"] == str(work / "org" / "some-model")
    assert shown["encoders"]["image"]["checkpoint"] == "pkg://xmcore/x.pth"


def test_index_and_evaluate_resolve_typed_data_paths_against_the_working_directory(
        capsys, tmp_path, monkeypatch, trained_run):
    work = tmp_path / "work"
    write_photos(work / "photos", ["red", "blue"])
    monkeypatch.chdir(work)  # trained_run's recipe folder is recipes/, which has no photos

    # the README's own example
    code, out, err = run(capsys, "index", trained_run, "--out", "idx", "--data", "data.name=imagefolder", "data.root=photos")
    assert code == 0, err
    paths = [json.loads(line)["path"] for line in (work / "idx" / "metadata" / "image.jsonl").read_text().splitlines()]
    assert len(paths) == 12 and all(p.startswith(str(work / "photos")) for p in paths)

    code, out, err = run(capsys, "evaluate", trained_run, "--out", "ev", "data.name=imagefolder", "data.root=photos",
                         "eval.metrics=[{name: recall, k: [1]}]")
    assert code == 0, err
    assert yaml.safe_load((work / "ev" / "recipe.yaml").read_text())["data"]["root"] == str(work / "photos")
    assert set(json.loads((work / "ev" / "metrics.json").read_text())) >= {"i2t/R@1", "t2i/R@1"}


def test_compare_names_a_damaged_run_file_instead_of_a_traceback(capsys, tmp_path, trained_run):
    """A hand-edited recipe.yaml (a date YAML cannot build) or a cut-off metrics.json: exit 2, the file named."""
    bad_recipe, bad_metrics = tmp_path / "bad-recipe", tmp_path / "bad-metrics"
    for folder in (bad_recipe, bad_metrics):
        shutil.copytree(trained_run, folder)
    (bad_recipe / "recipe.yaml").write_text("name: x\nseed: 2020-13-45\n")
    (bad_metrics / "metrics.json").write_text('{"i2t/R@1": 0.')
    for folder, named in ((bad_recipe, "recipe.yaml: line 2"), (bad_metrics, "metrics.json: not readable JSON")):
        code, out, err = run(capsys, "compare", trained_run, folder, "--out", tmp_path / "cmp")
        assert code == 2 and named in err and "Traceback" not in err, err
