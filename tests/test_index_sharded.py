"""An index folder whose FAISS index is split in shards (``xmcore index --shards K``): searched through FAISS's
IndexShards, it answers exactly as the one-file index does."""

import json

import pytest

from conftest import cli


@pytest.fixture(scope="module")
def sharded_index(trained_run, tmp_path_factory):
    from xmcore.testing import run_cli

    out = tmp_path_factory.mktemp("sharded") / "gallery"
    result = run_cli("index", trained_run, "--out", out, "--split", "test", "--shards", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_a_sharded_index_returns_the_same_top_10_as_the_one_file_index(sharded_index, gallery_index, plugins):
    from xmcore.search import SearchIndex

    manifest = json.loads((sharded_index / "manifest.json").read_text())
    for modality, entry in manifest["modalities"].items():
        parts = entry["index"]["shards"]
        assert [p["file"] for p in parts] == [f"faiss/{modality}-s{k:02d}.index" for k in range(3)]
        assert [p["offset"] for p in parts] == [0, parts[0]["ntotal"], parts[0]["ntotal"] + parts[1]["ntotal"]]
        assert sum(p["ntotal"] for p in parts) == entry["count"] and all(p["file"] in manifest["checksums"] for p in parts)
        assert not (sharded_index / f"faiss/{modality}.index").exists()
    one, sharded = SearchIndex(gallery_index, plugins), SearchIndex(sharded_index, plugins)
    assert type(sharded.indexes["image"]).__name__ == "IndexShards"
    queries = [("text", row["caption"], "image") for row in one.items["text"][:12]]
    queries += [("text", row["caption"], "text") for row in one.items["text"][::7][:6]]
    for modality, query, target in queries:
        expected, found = one.search(modality, query, 10, target), sharded.search(modality, query, 10, target)
        assert [h["id"] for h in found] == [h["id"] for h in expected]
        assert [h["score"] for h in found] == pytest.approx([h["score"] for h in expected], abs=1e-6)
    # the ids span every shard: a search that only read the first one could not return them
    last_rows = {int(h["id"].rsplit("-", 1)[1]) for _, q, t in queries for h in sharded.search("text", q, 10, t)}
    assert max(last_rows) >= manifest["modalities"]["image"]["index"]["shards"][2]["offset"]


def test_search_through_the_cli_reads_every_shard(sharded_index, gallery_index, capfd):
    caption = json.loads((gallery_index / "metadata" / "text.jsonl").read_text().splitlines()[-1])["caption"]
    outputs = []
    for folder in (gallery_index, sharded_index):
        result = cli(capfd, "search", folder, "--text", caption, "-k", "10", "--json")
        assert result.returncode == 0, result.stderr
        outputs.append([(h["id"], round(h["score"], 5)) for h in json.loads(result.stdout)])
    assert outputs[0] == outputs[1]


def test_a_changed_shard_is_refused(sharded_index, tmp_path, capfd):
    import shutil

    copy = shutil.copytree(sharded_index, tmp_path / "copy")
    with open(copy / "faiss" / "image-s02.index", "ab") as fh:
        fh.write(b"\0")
    result = cli(capfd, "search", copy, "--text", "a red circle")
    assert result.returncode == 2 and "faiss/image-s02.index" in result.stderr and "Traceback" not in result.stderr


def test_more_shards_than_items_is_refused(trained_run, tmp_path, capfd):
    result = cli(capfd, "index", trained_run, "--out", tmp_path / "idx", "--split", "test", "--shards", "100000")
    assert result.returncode == 2 and "--shards 100000" in result.stderr and "at most" in result.stderr


def test_the_server_searches_every_shard(sharded_index, gallery_index, plugins):
    from fastapi.testclient import TestClient

    from xmcore.search import SearchIndex
    from xmcore.serve import create_app

    caption = json.loads((gallery_index / "metadata" / "text.jsonl").read_text().splitlines()[-1])["caption"]
    answers = []
    for folder in (gallery_index, sharded_index):
        response = TestClient(create_app(SearchIndex(folder, plugins))).get("/search", params={"text": caption, "k": 10})
        assert response.status_code == 200, response.text
        answers.append([(h["id"], round(h["score"], 5)) for h in response.json()["results"]])
    assert answers[0] == answers[1]


def test_items_are_not_added_to_a_sharded_index(sharded_index, trained_run, tmp_path, capfd):
    import shutil

    copy = shutil.copytree(sharded_index, tmp_path / "copy")
    result = cli(capfd, "index", trained_run, "--out", copy, "--split", "val", "--add")
    assert result.returncode == 2 and "--add" in result.stderr and "--shards" in result.stderr
    assert json.loads((copy / "manifest.json").read_text()) == json.loads((sharded_index / "manifest.json").read_text())
