"""`xmcore index` and `xmcore search`: a trained run's gallery in a self-contained FAISS index."""

import json
import shutil

import numpy as np
import pytest

from conftest import cli
from xmcore.testing import free_port, run_cli


@pytest.fixture(scope="module")
def run_dir(trained_run):
    return trained_run


@pytest.fixture(scope="module")
def index_dir(gallery_index):
    return gallery_index


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_index_folder_holds_embeddings_metadata_faiss_model_and_a_manifest_with_checksums(index_dir):
    from xmcore.search import verify

    manifest = json.loads((index_dir / "manifest.json").read_text())
    images, texts = lines(index_dir / "metadata" / "image.jsonl"), lines(index_dir / "metadata" / "text.jsonl")
    assert manifest["modalities"]["image"]["count"] == len(images) > 0
    assert manifest["modalities"]["text"]["count"] == len(texts) > len(images)
    assert manifest["modalities"]["image"]["index"] == {"file": "faiss/image.index", "type": "flat", "params": {},
                                                          "ntotal": len(images)}
    emb = np.load(index_dir / "embeddings" / "image-00000.npy")
    assert emb.shape == (len(images), manifest["model"]["dim"]) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    # generated images have no file of their own: the index keeps a copy it can show
    assert all((index_dir / m["media"]).is_file() for m in images)
    assert all(t["belongs_to"].startswith("image-") and t["caption"] for t in texts)
    assert {"model/weights.pt", "model/recipe.yaml", "faiss/text.index", "metadata/text.jsonl",
            "embeddings/text-00000.npy"} <= set(manifest["checksums"])
    assert set(manifest["media_checksums"]) == {f"image-{i}.png" for i in range(len(images))}
    assert manifest["recipe"]["fusion"]["name"] == "nonlinear" and manifest["model"]["checkpoint_sha256"]
    assert verify(index_dir) == []
    assert not (index_dir / "building.json").exists()


def test_queries_are_encoded_exactly_as_the_gallery_was(index_dir, capsys):
    # an item of the gallery, given as a query, finds itself first with cosine 1: the stored model is the indexing one
    texts = lines(index_dir / "metadata" / "text.jsonl")
    result = run_cli("search", index_dir, "--text", texts[3]["caption"], "--target", "text", "-k", "1", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    (hit,) = json.loads(result.stdout)
    assert hit["caption"] == texts[3]["caption"] and hit["score"] == pytest.approx(1.0, abs=1e-4)

    from xmcore.cli import main

    assert main(["search", str(index_dir), "--image", str(index_dir / "media" / "image-2.png"), "--target", "image",
                 "-k", "1", "--json"]) == 0
    (hit,) = json.loads(capsys.readouterr().out)
    assert hit["id"] == "image-2" and hit["score"] == pytest.approx(1.0, abs=1e-4)


def test_text_search_prints_a_table_of_k_images(index_dir, capfd):
    result = cli(capfd, "search", index_dir, "--text", "a red circle left of a blue square", "-k", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "image-" in line]
    assert len(rows) == 4 and rows[0].startswith("| 1 |")


def test_the_index_works_without_the_run_it_came_from(run_dir, tmp_path, plugins):
    from xmcore.search import SearchIndex, build_index

    copy = tmp_path / "run-copy"
    shutil.copytree(run_dir, copy)
    build_index(copy, tmp_path / "idx", plugins, splits=["test"])
    shutil.rmtree(copy)
    moved = tmp_path / "elsewhere"
    (tmp_path / "idx").rename(moved)
    index = SearchIndex(moved, plugins)
    assert len(index.search("text", "a blue square", k=3)) == 3


def test_an_interrupted_build_resumes_from_its_shards(run_dir, tmp_path, plugins, monkeypatch, capsys):
    import xmcore.search.gallery as gallery_module
    from xmcore.search import build_index

    clean = build_index(run_dir, tmp_path / "clean", plugins, splits=["test"], shard_size=16)

    real, calls = gallery_module.embed_rows, []

    def dies_on_third_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gallery_module, "embed_rows", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        build_index(run_dir, tmp_path / "resumed", plugins, splits=["test"], shard_size=16)
    assert (tmp_path / "resumed" / "building.json").is_file() and not (tmp_path / "resumed" / "manifest.json").exists()
    from xmcore.cli import main

    assert main(["search", str(tmp_path / "resumed"), "--text", "a red square"]) != 0
    assert "interrupted build" in capsys.readouterr().err

    calls.clear()
    monkeypatch.setattr(gallery_module, "embed_rows", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = build_index(run_dir, tmp_path / "resumed", plugins, splits=["test"], shard_size=16)
    shards = sum(len(m["shards"]) for m in resumed["modalities"].values())
    assert len(calls) == shards - 2  # the two finished shards were kept
    for name in resumed["checksums"]:
        if name.startswith(("embeddings/", "metadata/")):
            assert resumed["checksums"][name] == clean["checksums"][name], name


def test_items_can_be_added_to_an_index(run_dir, tmp_path, plugins, capsys, monkeypatch):
    import xmcore.search.gallery as gallery_module
    from xmcore.search import SearchIndex, build_index, verify

    first = build_index(run_dir, tmp_path / "idx", plugins, splits=["test"])
    n_img, n_txt = first["modalities"]["image"]["count"], first["modalities"]["text"]["count"]
    from xmcore.cli import main

    assert main(["index", str(run_dir), "--out", str(tmp_path / "idx"), "--split", "test"]) != 0
    assert "--add" in capsys.readouterr().err

    # an --add interrupted after its first modality leaves the index it started from intact
    real = gallery_module.embed_rows

    def dies_on_text(module, modality, *args, **kwargs):
        if modality == "text":
            raise KeyboardInterrupt
        return real(module, modality, *args, **kwargs)

    monkeypatch.setattr(gallery_module, "embed_rows", dies_on_text)
    with pytest.raises(KeyboardInterrupt):
        build_index(run_dir, tmp_path / "idx", plugins, splits=["val"], add=True)
    assert verify(tmp_path / "idx") == [] and SearchIndex(tmp_path / "idx", plugins).indexes["image"].ntotal == n_img
    monkeypatch.setattr(gallery_module, "embed_rows", real)

    # run again (through the CLI): both modalities added once, ids continuing, captions pointing at the new images
    capsys.readouterr()
    assert main(["index", str(run_dir), "--out", str(tmp_path / "idx"), "--split", "val", "--add"]) == 0, capsys.readouterr().err
    index = SearchIndex(tmp_path / "idx", plugins)
    images, texts = index.items["image"], index.items["text"]
    assert len(images) == index.indexes["image"].ntotal > n_img and len(texts) == index.indexes["text"].ntotal > n_txt
    assert [r["id"] for r in images] == [f"image-{i}" for i in range(len(images))]
    assert images[n_img]["split"] == "val" and texts[n_txt]["belongs_to"] == f"image-{n_img}"
    assert index.search("image", _media(tmp_path / "idx", images[n_img]), k=1, target="image")[0]["id"] == f"image-{n_img}"
    assert verify(tmp_path / "idx") == [] and not (tmp_path / "idx" / "metadata" / "image.jsonl").exists()  # old generation gone

    # adding to one modality keeps the other
    after = build_index(run_dir, tmp_path / "idx", plugins, splits=["train"], modalities=["image"], add=True)
    assert after["modalities"]["text"]["count"] == len(texts) and after["modalities"]["image"]["count"] > len(images)
    assert SearchIndex(tmp_path / "idx", plugins).search("text", texts[0]["caption"], k=1, target="text")[0]["id"] == "text-0"


def _media(index_dir, row):
    from PIL import Image

    return Image.open(index_dir / row["media"]).convert("RGB")


@pytest.mark.parametrize("kind,extra", [("hnsw", ["--hnsw-m", "8", "--ef-search", "32"]),
                                        ("ivfpq", ["--nlist", "2", "--pq-m", "8", "--nbits", "3", "--nprobe", "2",
                                                   "--refine", "4"])])
def test_approximate_indexes(run_dir, tmp_path, kind, extra, plugins):
    from xmcore.search import SearchIndex, build_index, IndexOptions

    options = IndexOptions(kind=kind, **{a.lstrip("-").replace("-", "_"): int(b) for a, b in zip(extra[::2], extra[1::2])})
    manifest = build_index(run_dir, tmp_path / kind, plugins, splits=["test"], modalities=["text"], options=options)
    entry = manifest["modalities"]["text"]["index"]
    assert entry["type"] == kind and entry["ntotal"] == manifest["modalities"]["text"]["count"]
    index = SearchIndex(tmp_path / kind, plugins)
    hits = index.search("text", index.items["text"][0]["caption"], k=5, target="text")
    # the item itself comes first with cosine 1 (IVF-PQ: its codes are approximate; --refine re-ranks exactly)
    assert len(hits) == 5 and hits[0]["caption"] == index.items["text"][0]["caption"]
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_ivfpq_on_too_few_vectors_says_what_to_change(run_dir, tmp_path, capsys):
    from xmcore.cli import main

    assert main(["index", str(run_dir), "--out", str(tmp_path / "idx"), "--split", "test", "--index", "ivfpq"]) != 0
    err = capsys.readouterr().err
    assert "needs at least 1024 vectors" in err and "--nlist" in err


def test_a_changed_index_file_is_refused(index_dir, tmp_path, capfd):
    copy = tmp_path / "idx"
    shutil.copytree(index_dir, copy)
    with open(copy / "metadata" / "image.jsonl", "a") as fh:
        fh.write('{"id": "image-999", "path": "/etc/passwd"}\n')
    result = cli(capfd, "search", copy, "--text", "a red square")
    assert result.returncode != 0
    assert "differ from the manifest" in result.stderr and "metadata/image.jsonl" in result.stderr


@pytest.mark.parametrize("tampered", ["model/weights.pt", "faiss/image.index"])
def test_search_and_serve_refuse_a_changed_model_or_faiss_file(index_dir, tmp_path, capfd, monkeypatch, tampered):
    import uvicorn

    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert tampered in manifest["checksums"]
    copy = tmp_path / "idx"
    shutil.copytree(index_dir, copy)
    data = bytearray((copy / tampered).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit pattern changed, the size kept
    (copy / tampered).write_bytes(bytes(data))

    def served(*args, **kwargs):
        raise AssertionError(f"xmcore serve served an index whose {tampered} was changed")

    monkeypatch.setattr(uvicorn.Server, "run", served)
    for command in (["search", copy, "--text", "a red square"], ["serve", copy, "--port", str(free_port())]):
        result = cli(capfd, *command)
        assert result.returncode == 2, (command[0], result.stderr)
        assert "differ from the manifest" in result.stderr and tampered in result.stderr, result.stderr
        assert "serving" not in result.stdout


def test_search_input_errors_are_clear(index_dir, tmp_path, capsys):
    from xmcore.cli import main

    (tmp_path / "not-an-image.png").write_text("hello")
    for args, expected in [(["--text", "  "], "empty"), (["--image", str(tmp_path / "none.png")], "no such file"),
                           (["--image", str(tmp_path / "not-an-image.png")], "not a readable image"),
                           (["--text", "x", "-k", "0"], "-k"), (["--text", "x", "--target", "audio"], "audio")]:
        assert main(["search", str(index_dir), *args]) != 0, args  # the CLI's own error path: a message, no traceback
        assert expected in capsys.readouterr().err, args


def test_gallery_items_of_a_split_with_more_than_one_member_modality():
    # A split's first modality holds the owners; each other modality's item j belongs to owner[j] (the members
    # are aligned: caption j as text and as speech).  Duck-typed, so the test reads no dataset.
    from types import SimpleNamespace

    from xmcore.search import gallery_items

    class Spoken:
        def __init__(self, j):
            self.j = j

        def __str__(self):
            return f"spoken caption {self.j}"

    def split(n_images):
        owner = np.repeat(np.arange(n_images), 2)
        return SimpleNamespace(
            modalities=("image", "text", "speech"), owner=owner, labels=np.arange(n_images) + 10, member_labels=None,
            items={"image": [f"<image {i}>" for i in range(n_images)], "text": [f"caption {j}" for j in range(len(owner))],
                   "speech": [Spoken(j) for j in range(len(owner))]})

    data = SimpleNamespace(splits={"train": split(2), "test": split(3)})
    gallery = gallery_items(data, ["train", "test"], ["image", "text", "speech"])
    assert [len(gallery[m]) for m in ("image", "text", "speech")] == [5, 10, 10]
    for member in ("text", "speech"):
        assert [g.owner for g in gallery[member]] == [("image", i) for i in (0, 0, 1, 1, 2, 2, 3, 3, 4, 4)]
        assert [g.meta["label"] for g in gallery[member]] == [10, 10, 11, 11, 10, 10, 11, 11, 12, 12]
    assert gallery["speech"][7].meta == {"split": "test", "source": "spoken caption 3", "label": 11}
    assert gallery["text"][7].meta == {"split": "test", "caption": "caption 3", "label": 11}
    assert all(g.owner is None for g in gallery["image"]) and "source" not in gallery["image"][0].meta
    # without the owners in the gallery, members point at nothing
    assert all(g.owner is None for g in gallery_items(data, ["test"], ["speech"])["speech"])
