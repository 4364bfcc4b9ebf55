"""`xmcore index ... trainer.devices=2 trainer.strategy=ddp`: two processes (Lightning DDP on the CPU, gloo)
write the index one process writes, and a killed build resumes on any number of processes."""

import json

import numpy as np
import pytest

from xmcore.testing import free_port, run_cli

DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
SHARD = 4  # the test split's 8 pictures and 40 captions in 2 + 10 shards: both processes embed some of each


@pytest.fixture(scope="module")
def one_process(trained_run, tmp_path_factory, plugins):
    """The index as `xmcore index` writes it today: one process, no trainer keys."""
    from xmcore.search import build_index

    out = tmp_path_factory.mktemp("one-process") / "index"
    build_index(trained_run, out, plugins, splits=["test"], shard_size=SHARD)
    return out


def index_on_two_processes(run_dir, out):
    # a port of its own: Lightning's default one may still be held by an earlier run on this machine
    return run_cli("index", run_dir, "--out", out, "--split", "test", "--shard-size", SHARD, *DDP,
                   env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})


def assert_same_index(ours, reference):
    """The same ids in the same order, embeddings and FAISS vectors equal to 1e-6, every other file byte for
    byte, the manifest equal but for its timing fields."""
    from xmcore.search import verify
    from xmcore.search.faiss_index import read_faiss

    mine, theirs = (json.loads((d / "manifest.json").read_text()) for d in (ours, reference))
    numeric = ("embeddings/", "faiss/")  # written from floats that two processes may round differently
    for manifest in (mine, theirs):
        manifest.pop("created"), manifest.pop("updated")
        manifest["checksums"] = {k: (v if not k.startswith(numeric) else "-") for k, v in manifest["checksums"].items()}
    assert mine == theirs
    for modality, entry in theirs["modalities"].items():
        ids = [[json.loads(line)["id"] for line in (d / entry["metadata"]).read_text().splitlines()] for d in (ours, reference)]
        assert ids[0] == ids[1] == [f"{modality}-{i}" for i in range(entry["count"])]
        for shard in entry["shards"]:
            np.testing.assert_allclose(np.load(ours / shard["file"]), np.load(reference / shard["file"]), atol=1e-6)
        a, b = (read_faiss(d / entry["index"]["file"]) for d in (ours, reference))
        np.testing.assert_allclose(a.reconstruct_n(0, a.ntotal), b.reconstruct_n(0, b.ntotal), atol=1e-6)
    assert verify(ours) == []
    assert not (ours / "building.json").exists() and not (ours / "building").exists()


def test_two_processes_write_the_index_one_process_writes(trained_run, one_process, tmp_path):
    result = index_on_two_processes(trained_run, tmp_path / "index")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "embedded 48 items on 2 processes" in result.stderr and "per process: 24 + 24)" in result.stderr
    assert result.stdout.count("image: 8 items") == 1  # rank 0 alone reports
    assert_same_index(tmp_path / "index", one_process)


def test_a_killed_build_resumes_on_another_number_of_processes(trained_run, one_process, tmp_path, plugins, monkeypatch):
    from xmcore.search import build_index
    from xmcore.search.predict import ShardWriter

    real, written = ShardWriter._write, []

    def killed_after_three_shards(self, shard, rank):
        if len(written) == 3:
            raise RuntimeError("killed")
        written.append(shard.file)
        return real(self, shard, rank)

    monkeypatch.setattr(ShardWriter, "_write", killed_after_three_shards)
    out = tmp_path / "index"
    with pytest.raises(RuntimeError, match="killed"):  # one process on Lightning's path
        build_index(trained_run, out, plugins, ["trainer.accelerator=cpu", "trainer.devices=1"], splits=["test"],
                    shard_size=SHARD)
    assert written == ["embeddings/image-00000.npy", "embeddings/image-00001.npy", "embeddings/text-00000.npy"]
    assert not (out / "manifest.json").exists()
    kept = {name: (out / name).stat().st_mtime_ns for name in written}

    result = index_on_two_processes(trained_run, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming: 3 shards already written" in result.stderr
    # 48 less the 12 of the three kept shards; the other nine dealt out in turn (the 4th, 6th, ... to rank 0)
    assert "embedded 36 items on 2 processes" in result.stderr and "per process: 16 + 20)" in result.stderr
    assert {name: (out / name).stat().st_mtime_ns for name in written} == kept
    assert_same_index(out, one_process)


def test_trainer_keys_that_do_not_embed_are_refused(trained_run, tmp_path, capsys):
    from xmcore.cli import main

    assert main(["index", str(trained_run), "--out", str(tmp_path / "index"), "trainer.max_epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "trainer.max_epochs" in err and "trainer.devices" in err and "Traceback" not in err
    assert not (tmp_path / "index").exists()
