import os
import tempfile
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# The feature cache of every run in the suite (and its subprocesses) stays in a temporary folder.
os.environ["XMCORE_CACHE_DIR"] = tempfile.mkdtemp(prefix="xmcore-cache-")

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def cli(capfd, *args):
    """``xmcore ARGS`` in this process: exit status, stdout and stderr, as a CompletedProcess would have them.

    For tests where a subprocess is not the point; the entry point itself is run as a real process by
    test_plugins.py (and by the DDP and server tests)."""
    from types import SimpleNamespace

    from xmcore.cli import main

    capfd.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


@pytest.fixture(scope="session")
def plugins():
    from xmcore.plugins import load_plugins

    return load_plugins()


@pytest.fixture(scope="session")
def example_plugin_path(tmp_path_factory):
    """The third-party fixture package, installed with pip into its own folder (put it on PYTHONPATH)."""
    target = tmp_path_factory.mktemp("site")
    src = ROOT / "tests" / "fixtures" / "xmcore-example-plugin"
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(src)],
        check=True,
        cwd=build,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    return target


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, plugins):
    """A quickstart run trained for a few steps (in this process), its report drawn: for evaluating,
    reporting, indexing and serving.  Read-only: a test that writes into a run uses ``trained_run_copy``."""
    from xmcore.recipe import load_recipe, validate
    from xmcore.run import train_and_evaluate
    from xmcore.testing import tiny_overrides

    recipe_path = ROOT / "recipes" / "quickstart.yaml"
    loaded = load_recipe(recipe_path, tiny_overrides(recipe_path, plugins) + ["eval.report=true"])
    out = tmp_path_factory.mktemp("trained") / "run"
    train_and_evaluate(validate(loaded, plugins), plugins, loaded.base_dir, out)
    return out


@pytest.fixture
def trained_run_copy(trained_run, tmp_path):
    """A copy of the session's trained run, for a test that writes into it."""
    import shutil

    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture(scope="session")
def gallery_index(trained_run, tmp_path_factory):
    """`xmcore index` (a real subprocess) of the trained run's test split."""
    from xmcore.testing import run_cli

    out = tmp_path_factory.mktemp("index") / "gallery"
    result = run_cli("index", trained_run, "--out", out, "--split", "test")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def trained_audio_run(tmp_path_factory, plugins):
    """recipes/audio-quickstart.yaml trained for a few steps (in this process): generated clips and captions."""
    from xmcore.recipe import load_recipe, validate
    from xmcore.run import train_and_evaluate
    from xmcore.testing import tiny_overrides

    recipe_path = ROOT / "recipes" / "audio-quickstart.yaml"
    loaded = load_recipe(recipe_path, tiny_overrides(recipe_path, plugins))
    out = tmp_path_factory.mktemp("trained-audio") / "run"
    train_and_evaluate(validate(loaded, plugins), plugins, loaded.base_dir, out)
    return out


@pytest.fixture(scope="session")
def audio_index(trained_audio_run, tmp_path_factory, plugins):
    """An index of the tiny audio run's clips and captions (all splits), built in this process."""
    from xmcore.search import build_index

    out = tmp_path_factory.mktemp("audio-index") / "gallery"
    build_index(trained_audio_run, out, plugins)
    return out


COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 70, 220), "yellow": (235, 200, 20)}


def write_image(path, colour, size=24, fmt=None):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), COLOURS[colour]).save(path, format=fmt)
    return path


def write_truncated_jpeg(path):
    write_image(path, "red", size=64, fmt="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_karpathy(root, images_per_split=(6, 2, 3), broken=False):
    """A Karpathy split file in exactly the published structure, with real images beside it."""
    import json

    entries = []
    colours = list(COLOURS)
    n = 0
    for split, count in zip(("train", "val", "test"), images_per_split):
        for _ in range(count):
            colour = colours[n % len(colours)]
            filename = f"{n:05d}.jpg"
            write_image(root / "images" / "sub" / filename, colour, fmt="JPEG")
            entries.append({
                "filepath": "sub", "filename": filename, "imgid": n, "split": split if n != 1 else "restval",
                "sentences": [{"raw": f"a {colour} square number {n}", "tokens": [], "imgid": n, "sentid": 5 * n + k}
                              for k in range(5)],
                "sentids": list(range(5 * n, 5 * n + 5)),
            })
            n += 1
    if broken:
        entries[0]["filename"] = "missing.jpg"
    path = root / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    return path


def write_csv(tmp_path, sep="\t", rows=None):
    rows = rows or [
        ("img/a.png", "a red square", "red", "train"),
        ("img/a.png", "one red box", "red", "train"),
        ("img/b.png", "a green square", "green", "train"),
        ("img/c.png", "a blue square", "blue", "test"),
        ("img/d.png", "a yellow square", "yellow", "val"),
    ]
    for path, _, colour, _ in rows:
        if not (tmp_path / path).exists() and colour in ("red", "green", "blue", "yellow"):
            write_image(tmp_path / path, colour)
    lines = [sep.join(["filepath", "title", "colour", "split"])] + [sep.join(r) for r in rows]
    manifest = tmp_path / "data.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def write_shards(folder, shards=2, per_shard=4, orphan=False):
    """webdataset shards as webdataset/img2dataset write them: KEY.jpg + KEY.txt + KEY.cls per sample."""
    import io
    import tarfile

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    colours = list(COLOURS)
    n = 0
    for s in range(shards):
        with tarfile.open(folder / f"train-{s:06d}.tar", "w") as tar:
            for _ in range(per_shard):
                colour = colours[n % len(colours)]
                buf = io.BytesIO()
                Image.new("RGB", (20, 20), COLOURS[colour]).save(buf, format="JPEG")
                members = {"jpg": buf.getvalue(), "txt": f"a {colour} picture {n}".encode(), "cls": colour.encode()}
                if orphan and n == 0:
                    del members["jpg"]
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{n:09d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                n += 1
    return folder
