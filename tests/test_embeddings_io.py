"""One embeddings file format: a run writes it, `xmcore evaluate --embeddings` and `xmcore report` read it
(and older runs' files); input that cannot be evaluated is refused with one line, exit 2, nothing written."""

import json
import shutil

import numpy as np
import pytest

from xmcore.cli import main

RECALL_RANK = "[{name: recall, k: [1, 5, 10]}, {name: rank}]"


def evaluate(capsys, npz, out, *extra):
    code = main(["evaluate", "--embeddings", str(npz), "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def small(n=6, per=2, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.normal(size=(n, d)).astype(np.float32), "text": rng.normal(size=(n * per, d)).astype(np.float32),
            "text_to_image": np.repeat(np.arange(n), per)}


def runs_metrics(run):
    """The metric list a run was evaluated with, as --metrics YAML."""
    import yaml

    return yaml.safe_dump(yaml.safe_load((run / "recipe.yaml").read_text())["eval"]["metrics"])


def test_a_runs_embeddings_file_reproduces_its_metrics(trained_run, tmp_path, capsys):
    with np.load(trained_run / "embeddings.npz") as z:
        assert {"modalities", "image", "text", "text_to_image"} <= set(z.files)
        assert z["modalities"].tolist() == ["image", "text"]
    code, _, err = evaluate(capsys, trained_run / "embeddings.npz", tmp_path / "again", "--metrics", runs_metrics(trained_run))
    assert code == 0, err
    run_metrics = json.loads((trained_run / "metrics.json").read_text())
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again.keys() == run_metrics.keys()
    assert again == pytest.approx(run_metrics, abs=1e-9)


def legacy_file(new_npz, path):
    """The format runs wrote before: emb_<m>, groups_<m>, owner, modalities."""
    with np.load(new_npz) as z:
        owner = z["text_to_image"]
        np.savez(path, modalities=np.array(["image", "text"]), emb_image=z["image"], emb_text=z["text"],
                 groups_image=np.arange(len(z["image"])), groups_text=owner, owner=owner)


def test_older_runs_embeddings_are_still_read_by_report_and_evaluate(trained_run, tmp_path, capsys, plugins):
    run = tmp_path / "old-run"
    shutil.copytree(trained_run, run)
    legacy_file(trained_run / "embeddings.npz", run / "embeddings.npz")
    (run / "report.md").unlink(missing_ok=True)
    assert main(["report", str(run)]) == 0, capsys.readouterr().err
    assert (run / "report.md").is_file() and (run / "recall_at_k.png").is_file()
    code, _, err = evaluate(capsys, run / "embeddings.npz", tmp_path / "ev", "--metrics", runs_metrics(trained_run))
    assert code == 0, err
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text()) == pytest.approx(
        json.loads((trained_run / "metrics.json").read_text()), abs=1e-9)


def test_report_redraws_from_the_current_format(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "report.md").unlink(missing_ok=True)
    assert main(["report", str(run)]) == 0, capsys.readouterr().err
    assert "Recall at K" in (run / "report.md").read_text()


def test_modalities_are_named_by_the_file(tmp_path, capsys):
    arrays = small()
    np.savez(tmp_path / "a.npz", modalities=np.array(["audio", "text"]), audio=arrays["image"], text=arrays["text"],
             text_to_audio=arrays["text_to_image"])
    code, out, err = evaluate(capsys, tmp_path / "a.npz", tmp_path / "out", "--metrics", RECALL_RANK)
    assert code == 0, err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "a2t/R@1" in metrics and "t2a/R@1" in metrics and "| a2t |" in out


def test_string_labels_are_classes(tmp_path, capsys):
    arrays = small()
    classes = np.array(["cat", "dog", "cat", "fox", "dog", "fox"])
    np.savez(tmp_path / "s.npz", **arrays, image_labels=classes, text_labels=classes[arrays["text_to_image"]])
    ids = {"cat": 0, "dog": 1, "fox": 2}
    as_ints = np.array([ids[c] for c in classes])
    np.savez(tmp_path / "i.npz", **arrays, image_labels=as_ints, text_labels=as_ints[arrays["text_to_image"]])
    assert evaluate(capsys, tmp_path / "s.npz", tmp_path / "s")[0] == 0
    assert evaluate(capsys, tmp_path / "i.npz", tmp_path / "i")[0] == 0
    by_name = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert by_name == json.loads((tmp_path / "i" / "metrics.json").read_text())
    assert all(np.isfinite(v) for v in by_name.values())


def with_nan(a):
    a = small()
    a["image"][3, 2] = np.nan
    return a


def with_inf(a):
    a = small()
    a["text"][5] = np.inf
    return a


def lonely_image(a):
    a = small()
    a["text_to_image"] = np.where(a["text_to_image"] == 3, 2, a["text_to_image"])  # image 3 has no caption
    return a


def empty(a):
    return {"image": np.zeros((0, 8), np.float32), "text": np.zeros((0, 8), np.float32), "text_to_image": np.zeros(0, np.int64)}


def float_labels(a):
    a = small()
    return {**a, "image_labels": np.arange(6) * 1.5, "text_labels": (np.arange(6) * 1.5)[a["text_to_image"]]}


def mixed_labels(a):
    a = small()
    return {**a, "image_labels": np.arange(6), "text_labels": np.array([str(i) for i in a["text_to_image"]])}


def class_without_texts(a):
    a = small()
    labels = np.arange(6)
    text_labels = labels[a["text_to_image"]]
    return {**a, "image_labels": labels, "text_labels": np.where(text_labels == 4, 0, text_labels)}


def one_label_array(a):
    return {**small(), "image_labels": np.arange(6)}


def float_owner(a):
    a = small()
    return {**a, "text_to_image": a["text_to_image"].astype(float)}


def owner_out_of_range(a):
    a = small()
    a["text_to_image"][0] = 6
    return a


def widths_differ(a):
    a = small()
    return {**a, "text": a["text"][:, :5]}


def object_array(a):
    return {**small(), "image_labels": np.array([{"x": 1}] * 6, dtype=object), "text_labels": np.zeros(12, int)}


def no_owner(a):
    a = small()
    del a["text_to_image"]
    return a


@pytest.mark.parametrize("make,fragments", [
    (with_nan, ["array 'image'", "NaN or infinite", "row 3"]),
    (with_inf, ["array 'text'", "NaN or infinite", "row 5"]),
    (lonely_image, ["array 'text_to_image'", "1 of 6 image rows have no text", "row 3"]),
    (empty, ["array 'image'", "empty"]),
    (float_labels, ["array 'image_labels'", "float64", "integers or strings"]),
    (mixed_labels, ["'image_labels' holds numbers", "'text_labels' texts"]),
    (class_without_texts, ["array 'image_labels'", "no text row has", "row 4 (4)"]),
    (one_label_array, ["'image_labels'", "no 'text_labels'"]),
    (float_owner, ["array 'text_to_image'", "expected integers"]),
    (owner_out_of_range, ["array 'text_to_image'", "[0, 6)"]),
    (widths_differ, ["'image' (8 columns)", "'text' (5 columns)"]),
    (object_array, ["array 'image_labels'", "Python objects"]),
    (no_owner, ["no array 'text_to_image'"]),
])
def test_bad_embeddings_are_one_line_exit_2_and_nothing_written(tmp_path, capsys, make, fragments):
    np.savez(tmp_path / "bad.npz", **make(None))
    out = tmp_path / "out"
    code, stdout, err = evaluate(capsys, tmp_path / "bad.npz", out)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: --embeddings: "), err
    assert "Traceback" not in err and stdout == ""
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not out.exists()


@pytest.mark.parametrize("write,fragment", [
    (lambda p: p.write_text("image,text\n1,2\n"), "not a readable .npz"),
    (lambda p: np.save(p.with_suffix(".npy"), np.zeros(3)) or p.with_suffix(".npy").rename(p), "holds one array"),
])
def test_files_that_are_not_npz_archives(tmp_path, capsys, write, fragment):
    write(tmp_path / "x.npz")
    code, _, err = evaluate(capsys, tmp_path / "x.npz", tmp_path / "out")
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
