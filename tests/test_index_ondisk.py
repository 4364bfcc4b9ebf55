"""Memory-bounded IVF-PQ: trained on a sample, filled shard by shard, inverted lists on disk
(``xmcore index --on-disk``, ``--max-memory``); the 5M-vector measurement is bench/index_scale.py --section memory."""

import json
import shutil

import numpy as np
import pytest

from conftest import cli


def clustered(n, d, seed):
    """Normalised vectors in 50 clusters (as bench/ann.py's, smaller)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).standard_normal((50, d)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    files, counts = [], []
    for k in range(3):
        files.append(folder / f"vectors-{k:05d}.npy")
        np.save(files[-1], clustered(2000, 32, seed=k))
        counts.append(2000)
    return files, counts


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth)])


def test_an_on_disk_index_answers_as_the_in_memory_one_and_near_exact_search(shards, tmp_path):
    import faiss

    from xmcore.search.ivf import IvfPlan, build_parts, open_index, read_part

    files, counts = shards
    vectors = np.concatenate([np.load(f) for f in files])
    queries = clustered(100, 32, seed=99)
    exact = faiss.IndexFlatIP(32)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    # sub-indexes of 1,500 rows: the 6,000 vectors reach the .ivfdata through four merged per-chunk indexes
    plan = IvfPlan(nlist=32, pq_m=16, nbits=6, nprobe=8, train_size=6000, quantizer="flat", chunk_rows=1500, why="")

    def configure(index):
        faiss.extract_index_ivf(index).nprobe = plan.nprobe

    found = {}
    for on_disk in (False, True):
        parts = build_parts(files, counts, tmp_path / str(on_disk), "faiss/v", plan=plan, on_disk=on_disk)
        entry = {"shards": parts, "on_disk": on_disk}
        _, found[on_disk] = open_index(tmp_path / str(on_disk), entry, configure).search(queries, 10)
    on_disk_files = sorted(p.name for p in (tmp_path / "True" / "faiss").iterdir())
    assert on_disk_files == ["v.index", "v.ivfdata"]  # the per-chunk indexes and the building folder are gone
    assert sorted(p.name for p in (tmp_path / "False" / "faiss").iterdir()) == ["v.index"]
    written = read_part(tmp_path / "True" / "faiss" / "v.index", on_disk=True)
    ivf = faiss.extract_index_ivf(written)
    assert isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists) and ivf.ntotal == 6000
    np.testing.assert_array_equal(found[True], found[False])  # the same trained index, the same codes
    assert recall(found[True], truth) >= 0.5  # PQ16 codes of 6 bits; a random order would score 0.002


def test_the_plan_follows_the_budget_and_says_why():
    from xmcore.errors import XmcoreError
    from xmcore.search.ivf import parse_memory, plan_ivf

    assert parse_memory("2GB") == 2 * 10**9 and parse_memory("1.5GiB") == int(1.5 * 2**30)
    big = plan_ivf(5_000_000, 256, parse_memory("2GB"), on_disk=True)
    assert (big.nlist, big.pq_m, big.nbits, big.quantizer) == (8192, 128, 8, "hnsw32")
    assert "IVF8192" in big.why and "PQ128x8" in big.why and len(big.why.splitlines()) == 2
    more = plan_ivf(20_000_000, 256, parse_memory("2.5GB"))
    assert more.pq_m == 64 and "PQ128 would not fit" in more.why  # 20M x (128 + 8) B = 2.7 GB: too much
    with pytest.raises(XmcoreError, match="too small for 5,000,000 vectors"):
        plan_ivf(5_000_000, 256, parse_memory("300MB"))


def test_an_on_disk_index_folder_opens_searches_moves_and_is_checksummed(trained_run, tmp_path, capfd, plugins):
    from xmcore.search import SearchIndex

    out = tmp_path / "ondisk"
    result = cli(capfd, "index", trained_run, "--out", out, "--split", "test", "--modality", "text", "--index", "ivfpq",
                 "--on-disk", "--nlist", "2", "--pq-m", "8", "--nbits", "3", "--nprobe", "2")
    assert result.returncode == 0, result.stderr
    assert "resizing" not in result.stdout  # FAISS's own prints stay out of the command's output
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["modalities"]["text"]["index"]
    assert manifest["format"] == 2 and entry["on_disk"] and entry["shards"][0]["ivfdata"] == "faiss/text.ivfdata"
    assert "faiss/text.ivfdata" in manifest["checksums"] and (out / "faiss" / "text.ivfdata").is_file()
    moved = shutil.move(out, tmp_path / "moved")  # the lists are found beside the index, wherever it is
    index = SearchIndex(moved, plugins)
    caption = index.items["text"][3]["caption"]
    hits = index.search("text", caption, k=5, target="text")
    assert len(hits) == 5 and caption in [h["caption"] for h in hits]
    result = cli(capfd, "search", moved, "--text", caption, "--target", "text", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)[0]["score"] > 0.9  # stdout is the JSON alone
    with open(moved / "faiss" / "text.ivfdata", "r+b") as fh:
        fh.write(b"\xff" * 16)
    result = cli(capfd, "search", moved, "--text", caption)
    assert result.returncode == 2 and "faiss/text.ivfdata" in result.stderr and "Traceback" not in result.stderr


def test_max_memory_chooses_the_parameters_and_says_why(trained_run, tmp_path, capfd, plugins, monkeypatch):
    from xmcore.search import SearchIndex

    monkeypatch.setattr("xmcore.search.ivf.FLAT_BELOW", 0)  # the test split is tiny: plan IVF-PQ all the same
    out = tmp_path / "budget"
    result = cli(capfd, "index", trained_run, "--out", out, "--split", "test", "--modality", "text",
                 "--max-memory", "1GB", "--on-disk")
    assert result.returncode == 0, result.stderr
    assert "text: --max-memory 1.0 GB:" in result.stdout and "nprobe" in result.stdout
    entry = json.loads((out / "manifest.json").read_text())["modalities"]["text"]["index"]
    assert entry["type"] == "ivfpq" and entry["max_memory"] == 10**9 and entry["plan"].startswith("--max-memory")
    index = SearchIndex(out, plugins)
    caption = index.items["text"][0]["caption"]
    assert caption in [h["caption"] for h in index.search("text", caption, k=10, target="text")]


@pytest.mark.parametrize("value,message", [("2XB", "'2XB' is not a size"), ("10MB", "is too small for")])
def test_a_bad_or_too_small_budget_says_what_to_give(trained_run, tmp_path, capfd, value, message):
    result = cli(capfd, "index", trained_run, "--out", tmp_path / "idx", "--split", "test", "--max-memory", value)
    assert result.returncode == 2 and message in result.stderr and "--max-memory" in result.stderr


def test_on_disk_needs_ivfpq(trained_run, tmp_path, capfd):
    result = cli(capfd, "index", trained_run, "--out", tmp_path / "idx", "--split", "test", "--index", "hnsw", "--on-disk")
    assert result.returncode == 2 and "--index ivfpq" in result.stderr


def test_a_small_gallery_under_a_budget_gets_an_exact_flat_index():
    from xmcore.errors import XmcoreError
    from xmcore.search.ivf import FLAT_BELOW, parse_memory, plan_ivf

    small = plan_ivf(500, 64, parse_memory("1GB"))
    assert small.kind == "flat" and small.params() == {} and "flat (exact)" in small.why and "--on-disk" not in small.why
    assert "--on-disk maps IVF-PQ's lists only" in plan_ivf(500, 64, parse_memory("1GB"), on_disk=True).why
    assert plan_ivf(FLAT_BELOW, 64, parse_memory("1GB")).kind == "ivfpq"  # from the threshold on: IVF-PQ
    # a budget the flat index does not fit is refused as before: IVF-PQ's training sample would need more
    with pytest.raises(XmcoreError, match="too small for 9,000 vectors"):
        plan_ivf(9_000, 1024, parse_memory("240MB"))


def test_max_memory_on_a_few_hundred_items_searches_exactly(trained_run, tmp_path, capfd, plugins):
    """``--max-memory`` (with ``--on-disk``) on 300 items: a flat index, said so, whose top k scores are the
    brute-force ones over the index's own embedding shards."""
    from xmcore.search.ivf import open_faiss

    out = tmp_path / "small"
    result = cli(capfd, "index", trained_run, "--out", out, "--split", "test", "--modality", "text",
                 "--max-memory", "1GB", "--on-disk", "data.test=60")
    assert result.returncode == 0, result.stderr
    assert "-> a flat (exact) index" in result.stdout and "--on-disk maps IVF-PQ's lists only" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["modalities"]["text"]
    assert manifest["format"] == 2 and entry["count"] == 300  # 60 pictures, 5 captions each
    assert entry["index"]["type"] == "flat" and not entry["index"]["on_disk"] and "flat" in entry["index"]["plan"]
    vectors = np.concatenate([np.load(out / s["file"]) for s in entry["shards"]]).astype(np.float32)
    queries = vectors[::10]
    scores, _ = open_faiss(out, entry["index"]).search(queries, 10)
    brute = -np.sort(-(queries @ vectors.T), axis=1)[:, :10]
    np.testing.assert_allclose(scores, brute, rtol=0, atol=1e-5)
    hits = json.loads(cli(capfd, "search", out, "--text", "a", "--target", "text", "--json", "-k", 3).stdout)
    assert len(hits) == 3  # the CLI's search path opens it too
