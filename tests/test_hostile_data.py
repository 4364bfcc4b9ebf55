"""Hostile data files: each bad file is skipped and reported (``data_report.json``, one warning; refused under
``data.strict``), or the dataset is refused with a message naming the file, the item, what was expected and
the fix (exit 2, no traceback).  Nothing outside the data folder is read, and nothing is written outside the
run folder: a symbolic link out of the data folder is refused, a tar member ``../evil.png`` is never unpacked.

The files are real: truncated and empty PNG/JPEG, a PNG header claiming 100,000 x 100,000 pixels (a
decompression bomb), text named .png, a file name that is not UTF-8, manifests with short rows, wrong separators, a byte-order mark and
bytes that are not UTF-8, a Karpathy file of wrong types, tar shards with hostile member names.
"""

import io
import json
import os
import struct
import tarfile
import zlib

import pytest

from conftest import ROOT, cli, write_image
from xmcore.data import clean_split
from xmcore.errors import XmcoreError
from xmcore.plugins import load_plugins
from xmcore.registry import BuildContext
from xmcore.testing import TINY_TRAINER

PLUGINS = load_plugins()


def build(name, base_dir, **params):
    component = PLUGINS["dataset"].get(name)
    return component.build(component.params.model_validate(params), BuildContext(base_dir=base_dir))


def reasons_by_item(report):
    """Each skipped item's file name (or tar member) and the category of its reason."""
    return {p["item"].split(" of ")[0].rsplit("/", 1)[-1]: p["reason"].split(" (")[0] for p in report["problems"]}


# ----------------------------------------------------------------------------------------- hostile files


def png_header(width, height, idat=b""):
    """A PNG whose header claims ``width`` x ``height`` pixels, followed by ``idat`` (a few compressed bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(idat or b"\0" * 64)) + chunk(b"IEND", b"")


def write_truncated_png(path):
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)  # noise: no compression
    Image.fromarray(pixels).save(path, format="PNG")
    path.write_bytes(path.read_bytes()[:6000])


def write_truncated_jpeg(path):
    write_image(path, "red", size=64, fmt="JPEG")
    path.write_bytes(path.read_bytes()[:300])


# name -> (writer, the category of reason it is skipped for)
HOSTILE_IMAGES = {
    "truncated.png": (write_truncated_png, "unreadable image"),
    "truncated.jpg": (write_truncated_jpeg, "unreadable image"),
    "empty.png": (lambda p: p.write_bytes(b""), "unreadable image"),
    "empty.jpg": (lambda p: p.write_bytes(b""), "unreadable image"),
    "bomb.png": (lambda p: p.write_bytes(png_header(100_000, 100_000)), "image too large"),  # PIL's own limit
    "huge.png": (lambda p: p.write_bytes(png_header(8_000, 7_000)), "image too large"),  # under PIL's, over xmcore's
    "text.png": (lambda p: p.write_text("<html><body>not a picture</body></html>\n"), "unreadable image"),
    "text.jpg": (lambda p: p.write_text("a caption, saved with the wrong name\n"), "unreadable image"),
}


@pytest.fixture
def hostile_folder(tmp_path):
    """An imagefolder (ROOT/<split>/<class>/<image>) of good pictures beside every hostile one, two symbolic
    links out of it (to a real picture and to a secret file) and a class folder that links out of it."""
    root = tmp_path / "data"
    outside = tmp_path / "outside"
    write_image(outside / "private.png", "green")
    (outside / "secret.png").write_text("password=hunter2\n")
    write_image(outside / "linked-class" / "x.png", "yellow")
    for split, colours in (("train", ("red", "blue")), ("test", ("red", "blue"))):
        for colour in colours:
            for i in range(3):
                write_image(root / split / colour / f"{i}.png", colour)
    bad = root / "train" / "red"
    for name, (write, _) in HOSTILE_IMAGES.items():
        write(bad / name)
    write_image(bad / os.fsdecode(b"name-\xff.png"), "red")  # a good picture under a name that is not UTF-8
    (bad / "link-private.png").symlink_to(outside / "private.png")
    (bad / "link-secret.png").symlink_to(outside / "secret.png")
    (bad / "link-dangling.png").symlink_to(tmp_path / "nowhere.png")
    (root / "train" / "yellow").symlink_to(outside / "linked-class", target_is_directory=True)
    write_image(root / "train" / "red" / "inside-target.png", "red")
    (bad / "link-inside.png").symlink_to(bad / "inside-target.png")  # stays in the folder: fine
    return root


EXPECTED_FOLDER_PROBLEMS = {
    **{name: reason for name, (_, reason) in HOSTILE_IMAGES.items()},
    os.fsdecode(b"name-\xff.png"): "file name is not UTF-8",  # no index metadata or report could hold it as text
    "link-private.png": "symbolic link out of the data folder",
    "link-secret.png": "symbolic link out of the data folder",
    "link-dangling.png": "missing file",
    "x.png": "symbolic link out of the data folder",  # train/yellow -> outside/linked-class
}


def test_every_hostile_image_is_skipped_with_its_reason(hostile_folder):
    data = build("imagefolder", hostile_folder.parent, root="data")
    cleaned, report = clean_split(data.splits["train"])
    assert reasons_by_item(report) == EXPECTED_FOLDER_PROBLEMS
    kept = {p.path.name for p in cleaned.items["image"]}
    assert kept == {"0.png", "1.png", "2.png", "inside-target.png", "link-inside.png"}
    assert cleaned.items["image"][0].load().size == (24, 24)
    bomb = next(p for p in report["problems"] if "bomb.png" in p["item"])
    assert "exceeds limit" in bomb["reason"]  # PIL's DecompressionBombError, caught from the header
    huge = next(p for p in report["problems"] if "huge.png" in p["item"])
    assert "8000 x 7000 pixels: more than 50 megapixels" in huge["reason"]  # refused before decoding
    secret = next(p for p in report["problems"] if "link-secret.png" in p["item"])
    assert str(hostile_folder) in secret["reason"] and "copy the file into the data folder" in secret["reason"]


def test_a_link_out_of_the_data_folder_is_never_opened(hostile_folder, monkeypatch):
    """The check refuses a link before anything reads the file it leads to."""
    import builtins

    from PIL import Image

    opened = []
    real_open, real_image_open = builtins.open, Image.open

    def spy(file, *args, **kwargs):
        opened.append(os.path.realpath(file) if isinstance(file, (str, os.PathLike)) else file)
        return real_open(file, *args, **kwargs)

    def image_spy(file, *args, **kwargs):
        opened.append(os.path.realpath(file) if isinstance(file, (str, os.PathLike)) else file)
        return real_image_open(file, *args, **kwargs)

    data = build("imagefolder", hostile_folder.parent, root="data")
    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(Image, "open", image_spy)
    clean_split(data.splits["train"], workers=1)
    outside = str(hostile_folder.parent / "outside")
    assert opened and not [p for p in opened if isinstance(p, str) and p.startswith(outside)]


def folder_recipe(tmp_path, root, strict=False):
    recipe = tmp_path / "r.yaml"
    recipe.write_text((ROOT / "recipes" / "quickstart.yaml").read_text())
    return recipe, ["data.name=imagefolder", f"data.root={root}", f"data.strict={str(strict).lower()}",
                    "data.batch_size=4", "encoders.image.img_size=32", *TINY_TRAINER]


def tree(folder):
    """Every path under ``folder`` with its size and modification time (links not followed)."""
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_a_run_on_hostile_files_trains_reports_them_and_writes_only_its_run_folder(hostile_folder, tmp_path, capfd):
    recipe, overrides = folder_recipe(tmp_path, hostile_folder)
    before = {name: tree(tmp_path / name) for name in ("data", "outside")}
    result = cli(capfd, "run", recipe, *overrides, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "bad items" in line]
    assert len(warnings) == 1 and f"skipped {len(EXPECTED_FOLDER_PROBLEMS)} bad items" in warnings[0]
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert reasons_by_item(report["splits"]["train"]) == EXPECTED_FOLDER_PROBLEMS
    assert {name: tree(tmp_path / name) for name in ("data", "outside")} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "outside", "r.yaml", "run"]


def test_strict_refuses_hostile_files_naming_each(hostile_folder, tmp_path, capfd):
    recipe, overrides = folder_recipe(tmp_path, hostile_folder, strict=True)
    result = cli(capfd, "data", "inspect", recipe, *overrides)
    assert result.returncode == 0, result.stderr[-2000:]  # inspect reports; it never trains
    assert f"problems: {len(EXPECTED_FOLDER_PROBLEMS)} items skipped" in result.stdout
    result = cli(capfd, "run", recipe, *overrides, "--out", tmp_path / "run")
    assert result.returncode == 2
    assert f"{len(EXPECTED_FOLDER_PROBLEMS)} bad items and data.strict is true" in result.stderr
    for name in ("bomb.png: image too large", "link-secret.png: symbolic link out of the data folder",
                 "empty.jpg: unreadable image"):
        assert name in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------------------------------ manifests


def write_pictures(folder, names=("a.png", "b.png", "c.png")):
    for name, colour in zip(names, ("red", "green", "blue")):
        write_image(folder / "img" / name, colour)


def test_csv_missing_columns_and_wrong_separator_are_refused_with_the_columns_found(tmp_path, capfd):
    write_pictures(tmp_path)
    (tmp_path / "cols.tsv").write_text("path\tcaption\nimg/a.png\ta red square\n")
    with pytest.raises(XmcoreError, match=r"cols.tsv: no column 'filepath', 'title' \(separator tab\); "
                                          r"columns found: path, caption; set data.image_column / data.caption_column"):
        build("csv", tmp_path, path="cols.tsv")
    (tmp_path / "commas.tsv").write_text("filepath,title\nimg/a.png,a red square\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text((ROOT / "recipes" / "quickstart.yaml").read_text())
    result = cli(capfd, "data", "inspect", recipe, "data.name=csv", f"data.path={tmp_path / 'commas.tsv'}")
    assert result.returncode == 2
    assert "commas.tsv: no column 'filepath', 'title' (separator tab); columns found: filepath,title" in result.stderr
    assert "data.separator to match the file" in result.stderr


def test_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    write_pictures(tmp_path)
    rows = "filepath\ttitle\nimg/a.png\ta red square\nimg/b.png\ta green square\n"
    (tmp_path / "bom.tsv").write_bytes(b"\xef\xbb\xbf" + rows.encode())
    data = build("csv", tmp_path, path="bom.tsv", split_ratios=(1.0, 0.0, 0.0))
    assert data.splits["train"].items["text"] == ["a red square", "a green square"]
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"filepath": "img/a.png", "title": "red"}).encode())
    assert build("jsonl", tmp_path, path="bom.jsonl", split_ratios=(1.0, 0.0, 0.0)).splits["train"].items["text"] == ["red"]


@pytest.mark.parametrize("name", ["bad.tsv", "bad.jsonl"])
def test_bytes_that_are_not_utf8_are_refused_naming_the_line(tmp_path, name, capfd):
    write_pictures(tmp_path)
    if name.endswith(".tsv"):
        lines = [b"filepath\ttitle", b"img/a.png\ta red square", b"img/b.png\ta gr\xe9en square"]
    else:
        lines = [json.dumps({"filepath": "img/a.png", "title": "red"}).encode(),
                 b'{"filepath": "img/b.png", "title": "gr\xe9en"}']
    (tmp_path / name).write_bytes(b"\n".join(lines) + b"\n")
    kind = "csv" if name.endswith(".tsv") else "jsonl"
    line = 3 if kind == "csv" else 2
    with pytest.raises(XmcoreError, match=rf"{name}: line {line} is not UTF-8 text \(.*byte 0xe9\); save the file as UTF-8"):
        build(kind, tmp_path, path=name)
    recipe = tmp_path / "r.yaml"
    recipe.write_text((ROOT / "recipes" / "quickstart.yaml").read_text())
    result = cli(capfd, "data", "inspect", recipe, f"data.name={kind}", f"data.path={tmp_path / name}")
    assert result.returncode == 2 and f"line {line} is not UTF-8 text" in result.stderr


def test_short_rows_and_wrong_types_are_skipped_with_their_row(tmp_path):
    write_pictures(tmp_path)
    (tmp_path / "short.tsv").write_text(
        "filepath\ttitle\nimg/a.png\ta red square\nimg/b.png\n\tan image without a path\nimg/c.png\ta blue square\n")
    cleaned, report = clean_split(build("csv", tmp_path, path="short.tsv", split_ratios=(1.0, 0.0, 0.0)).splits["train"])
    assert cleaned.items["text"] == ["a red square", "a blue square"]
    assert report["reasons"] == {"empty caption": 1, "no path in column 'filepath'": 1, "no usable text": 1}
    assert any(p["item"].endswith("short.tsv row 4") for p in report["problems"])

    rows = [{"filepath": "img/a.png", "title": "red"}, {"filepath": 5, "title": "a number"},
            {"filepath": None, "title": "null"}, {"filepath": "img/b.png", "title": ["a", "list"]},
            {"filepath": "img/c.png", "title": 7}]
    (tmp_path / "types.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    cleaned, report = clean_split(build("jsonl", tmp_path, path="types.jsonl", split_ratios=(1.0, 0.0, 0.0)).splits["train"])
    assert cleaned.items["text"] == ["red"]
    assert report["reasons"] == {"column 'filepath' holds int, not a path": 1, "no path in column 'filepath'": 1,
                                 "caption is not text": 2, "no usable text": 2}
    assert [p["item"].split("/")[-1] for p in report["problems"][:2]] == ["types.jsonl line 2", "types.jsonl line 3"]


KARPATHY_GOOD = {"filename": "a.png", "filepath": "img", "split": "train", "sentences": [{"raw": "a red square"}]}


@pytest.mark.parametrize("images, message", [
    ({"0": KARPATHY_GOOD}, "expected a Karpathy split file: an object with an 'images' list"),
    (["a.png"], r"images\[0\] is str; expected an object with filename"),
    ([{**KARPATHY_GOOD, "sentences": "a red square"}], r"images\[0\]: sentences is not a list of objects"),
    ([{**KARPATHY_GOOD, "sentences": ["a red square"]}], r"images\[0\]: sentences is not a list of objects"),
    ([KARPATHY_GOOD, {**KARPATHY_GOOD, "filename": 5}], r"images\[1\]: filename is int; expected"),
    ([{**KARPATHY_GOOD, "filepath": None}], r"images\[0\]: filepath is NoneType"),
    ([{**KARPATHY_GOOD, "split": 3}], r"images\[0\]: split is 3; expected .*split \(train, val, test or restval\)"),
    ([{"filename": "a.png"}], r"images\[0\] has no 'split', 'sentences'"),
])
def test_a_karpathy_file_of_wrong_types_is_refused_naming_the_entry(tmp_path, images, message, capfd):
    write_pictures(tmp_path)
    (tmp_path / "k.json").write_text(json.dumps({"images": images}))
    with pytest.raises(XmcoreError, match=message):
        build("karpathy", tmp_path, annotations="k.json", image_root=".")
    recipe = tmp_path / "r.yaml"
    recipe.write_text((ROOT / "recipes" / "quickstart.yaml").read_text())
    result = cli(capfd, "data", "inspect", recipe, "data.name=karpathy", f"data.annotations={tmp_path / 'k.json'}",
                 f"data.image_root={tmp_path}")
    assert result.returncode == 2 and "k.json" in result.stderr


def test_a_karpathy_filename_that_leaves_the_image_root_is_skipped(tmp_path):
    write_pictures(tmp_path / "data")
    write_image(tmp_path / "secret.png", "yellow")
    images = [KARPATHY_GOOD, {**KARPATHY_GOOD, "filename": "../../secret.png"},
              {**KARPATHY_GOOD, "filepath": "/", "filename": str(tmp_path / "secret.png")[1:]}]
    (tmp_path / "k.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"images": images}).encode())  # a BOM, too
    data = build("karpathy", tmp_path, annotations="k.json", image_root="data")
    cleaned, report = clean_split(data.splits["train"])
    assert [p.path.name for p in cleaned.items["image"]] == ["a.png"]
    assert report["reasons"] == {"filepath/filename lead outside data.image_root " + str(tmp_path / "data"): 2}


# ------------------------------------------------------------------------------------------ webdataset


def write_hostile_shard(path, outside_link):
    """A shard of two good samples and hostile ones: member names with '..' and absolute paths, a symbolic link
    member, a truncated picture, a bomb's header and a .json caption of the wrong type."""
    from PIL import Image

    def jpeg(colour):
        buf = io.BytesIO()
        Image.new("RGB", (20, 20), colour).save(buf, format="JPEG")
        return buf.getvalue()

    members = [
        ("good0.jpg", jpeg("red")), ("good0.txt", b"a red picture"),
        ("good1.jpg", jpeg("blue")), ("good1.txt", b"a blue picture"),
        ("../evil.png", jpeg("green")), ("../evil.txt", b"a green picture"),
        ("/tmp/abs-evil.png", jpeg("green")), ("/tmp/abs-evil.txt", b"absolute"),
        ("dir/../../up.png", jpeg("green")), ("dir/../../up.txt", b"up"),
        ("cut.jpg", jpeg("red")[:100]), ("cut.txt", b"cut short"),
        ("bomb.png", png_header(100_000, 100_000)), ("bomb.txt", b"a bomb"),
        ("typed.jpg", jpeg("red")), ("typed.json", json.dumps({"caption": ["not", "text"]}).encode()),
    ]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("linked.png")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside_link)
        tar.addfile(link)
        tar.addfile(tarfile.TarInfo("linked.txt"), io.BytesIO(b""))
    return path


def test_a_tar_with_hostile_member_names_writes_nothing_and_skips_them(tmp_path, capfd):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_image(tmp_path / "outside.png", "yellow")
    write_hostile_shard(shards / "train-000000.tar", tmp_path / "outside.png")
    before = tree(tmp_path)
    data = build("webdataset", tmp_path, train="shards/train-000000.tar", test="shards/train-000000.tar")
    cleaned, report = clean_split(data.splits["train"])
    assert cleaned.items["text"] == ["a red picture", "a blue picture"]
    assert [im.load().size for im in cleaned.items["image"]] == [(20, 20), (20, 20)]
    unsafe = sorted(p["item"].split(":", 1)[1] for p in report["problems"] if p["reason"].startswith("unsafe member name"))
    assert unsafe == ["../evil.png", "/tmp/abs-evil.png", "dir/../../up.png"]
    assert report["reasons"] == {"unsafe member name": 3, "unreadable image": 1, "image too large": 1,
                                 "sample without image": 1, "empty caption": 2, "no usable text": 1}
    orphan = next(p["item"] for p in report["problems"] if p["reason"] == "sample without image")
    assert orphan == f"{shards / 'train-000000.tar'}:linked"  # the symbolic link member: never followed
    recipe = tmp_path / "r.yaml"
    recipe.write_text((ROOT / "recipes" / "quickstart.yaml").read_text())
    shard = shards / "train-000000.tar"
    result = cli(capfd, "data", "inspect", recipe, "data.name=webdataset", f"data.train={shard}", "data.val=null",
                 f"data.test={shard}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "problems: 9 items skipped (3 unsafe member name," in result.stdout
    recipe.unlink()
    assert tree(tmp_path) == before  # nothing unpacked, beside the shard or above it
    assert not (tmp_path.parent / "evil.png").exists() and not os.path.exists("/tmp/abs-evil.png")


def test_a_truncated_tar_is_refused_naming_it(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    data = write_hostile_shard(shards / "whole.tar", tmp_path / "x").read_bytes()
    (shards / "cut.tar").write_bytes(data[:700])
    with pytest.raises(XmcoreError, match=r"webdataset: .*cut.tar is not an uncompressed tar shard"):
        build("webdataset", tmp_path, train="shards/cut.tar", test="shards/cut.tar")


# ---------------------------------------------------------------------------------------------- hf files


def test_a_bomb_stored_in_a_parquet_cell_is_skipped(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = io.BytesIO()
    write_image(tmp_path / "good.png", "red")
    good.write((tmp_path / "good.png").read_bytes())
    table = pa.table({"image": [good.getvalue(), png_header(100_000, 100_000), b"", b"not a picture"],
                      "caption": ["a red square", "a bomb", "nothing", "text"]})
    pq.write_table(table, tmp_path / "train.parquet")
    data = build("hf", tmp_path, path="train.parquet", split_ratios=(1.0, 0.0, 0.0))
    cleaned, report = clean_split(data.splits["train"])
    assert cleaned.items["text"] == ["a red square"]
    assert report["reasons"]["image too large"] == 1 and report["skipped"]["image"] == 3


@pytest.mark.parametrize("write, message", [
    (lambda p: p.write_bytes(b""), "not a readable Parquet file"),
    (lambda p: p.write_text("filepath,title\na.png,a red square\n"), "not a readable Parquet file"),
    (lambda p: p.write_bytes(b"PAR1" + b"\0" * 64), "not a readable Parquet file"),
])
def test_a_broken_parquet_file_is_refused_naming_it(tmp_path, write, message):
    write(tmp_path / "train.parquet")
    with pytest.raises(XmcoreError, match=rf"train.parquet: {message}"):
        build("hf", tmp_path, path="train.parquet")
