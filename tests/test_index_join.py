"""Rank 0's side of `xmcore index` on several processes: the metadata parts joined in blocks (never a whole
part in memory), and a process that listed another gallery refused before anything is joined."""

import hashlib
import json
import tracemalloc

from conftest import cli
from xmcore.io import file_sha256
from xmcore.search.faiss_index import IndexOptions
from xmcore.search.folder import Build, check_rank_jobs
from xmcore.search.gallery import join_files, write_metadata

BLOCK = 64 << 10


def test_the_join_copies_parts_in_blocks_and_checksums_them_on_the_way(tmp_path):
    parts = []
    for k in range(3):  # each part 16x the block: reading one whole would show in the peak
        part = tmp_path / "building" / f"part-{k}.jsonl"
        part.parent.mkdir(exist_ok=True)
        line = json.dumps({"id": f"image-{k}", "caption": "\u00e9" * 40}).encode() + b"\n"
        part.write_bytes(line * (16 * BLOCK // len(line)))
        parts.append(part)
    expected = b"".join(p.read_bytes() for p in parts) + "tail \u00e9\n".encode()
    out = tmp_path / "metadata" / "image.jsonl"

    tracemalloc.start()
    try:
        digest = join_files(out, [*parts, "tail \u00e9\n"], block=BLOCK)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert out.read_bytes() == expected
    assert digest == hashlib.sha256(expected).hexdigest() == file_sha256(out)
    assert peak < 4 * BLOCK, f"the join held {peak} bytes at once; a part is {parts[0].stat().st_size}"
    assert [p.name for p in out.parent.iterdir()] == ["image.jsonl"]  # no temporary file left


def test_write_metadata_appends_parts_to_the_earlier_generation_and_records_the_checksum(tmp_path):
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata" / "text.jsonl").write_text('{"id": "text-0"}\n')
    part = tmp_path / "part.jsonl"
    part.write_text('{"id": "text-1"}\n{"id": "text-2"}\n')
    previous = {"modalities": {"text": {"metadata": "metadata/text.jsonl", "media_types": ["image/png"], "count": 1}}}
    build = Build(tmp_path, previous, IndexOptions(), {}, ".g1")

    rel, media_types = write_metadata(build, "text", [part, '{"id": "text-3"}\n'], {"image/jpeg"})

    assert rel == "metadata/text.g1.jsonl" and media_types == ["image/jpeg", "image/png"]
    assert (tmp_path / rel).read_text() == "".join(f'{{"id": "text-{i}"}}\n' for i in range(4))
    assert build.checksums == {rel: file_sha256(tmp_path / rel)}


def test_the_gallery_fingerprint_tells_other_metadata_and_other_items_apart():
    from xmcore.search.gallery import GalleryItem, gallery_fingerprint

    def listed(captions, label=0):
        return gallery_fingerprint([GalleryItem(c, {"split": "test", "caption": c, "label": label}) for c in captions])

    ours = listed(["a red circle", "a blue square"])
    assert ours == listed(["a red circle", "a blue square"]) and ours["count"] == 2
    assert listed(["a blue square", "a red circle"])["items"] != ours["items"]  # the order counts
    relabelled = listed(["a red circle", "a blue square"], label=1)
    assert relabelled["items"] == ours["items"] and relabelled["listing"] != ours["listing"]


def job(images=8, listing="a"):
    return {"recipe": {"name": "quickstart"}, "content": {"image": {"count": images, "items": "x", "listing": listing}}}


def test_rank_records_of_another_gallery_are_named_with_what_differs(tmp_path):
    (tmp_path / "building").mkdir()
    (tmp_path / "building" / "rank-00000.json").write_text(json.dumps({"job": job(), "shards": {}}))
    check_rank_jobs(tmp_path, job())  # the same job: nothing to say

    for theirs, said in ((job(images=9), "9 image items, process 0 has 8"),
                         (job(listing="b"), "the same items with other metadata"),
                         ({**job(), "recipe": {"name": "other"}}, "another recipe")):
        (tmp_path / "building" / "rank-00001.json").write_text(json.dumps({"job": theirs, "shards": {}}))
        try:
            check_rank_jobs(tmp_path, job())
        except Exception as exc:  # an XmcoreError: one line for the CLI
            assert "process 1 embedded another gallery than process 0" in str(exc) and said in str(exc)
            assert "\n" not in str(exc)
        else:
            raise AssertionError(f"{theirs} was not refused")


def test_a_process_that_listed_another_gallery_is_refused_before_anything_is_joined(trained_run, tmp_path, capfd,
                                                                                    monkeypatch):
    """One process on Lightning's path, beside which a second process records a gallery of 9 pictures."""
    from xmcore.search.predict import ShardWriter

    real = ShardWriter._record

    def and_a_process_with_another_gallery(self, rank):
        real(self, rank)
        other = json.loads(json.dumps(self.job))
        other["content"]["image"].update(count=9, items="another")
        (self.build.out_dir / "building" / "rank-00001.json").write_text(json.dumps({"job": other, "shards": {}}))

    monkeypatch.setattr(ShardWriter, "_record", and_a_process_with_another_gallery)
    out = tmp_path / "index"
    args = ("index", trained_run, "--out", out, "--split", "test", "--shard-size", 4, "trainer.accelerator=cpu",
            "trainer.devices=1", "trainer.enable_progress_bar=false")
    result = cli(capfd, *args)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "rank-00001.json: process 1 embedded another gallery" in error
    assert "9 image items, process 0 has 8" in error
    assert not (out / "manifest.json").exists() and not (out / "metadata").exists() and not (out / "faiss").exists()

    monkeypatch.undo()  # the same command, every process agreeing: the shards written are kept
    result = cli(capfd, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming: 12 shards already written" in result.stderr and (out / "manifest.json").is_file()
