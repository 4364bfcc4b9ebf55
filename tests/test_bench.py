"""bench/run.py runs every benchmark script, and bench/serve_load.py runs without an index given (it builds the
quickstart's once).  The benchmarks' figures themselves are bench/'s, not the suite's."""

import importlib.util
import json
import shutil

import pytest

from conftest import ROOT

BENCH = ROOT / "bench"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_run_lists_every_benchmark_script():
    listed = _script("run").BENCHMARKS
    assert set(listed) == {p.stem for p in BENCH.glob("*.py")} - {"run"}


def test_serve_load_needs_no_index_and_has_a_short_setting_in_bench_run():
    serve_load, small = _script("serve_load"), _script("run").BENCHMARKS["serve_load"][0]
    args = serve_load.parse_args(small)
    assert args.index is None and (args.seconds, args.rounds, args.clients) == (10, 1, 8)


def test_serve_load_without_an_index_builds_the_quickstarts_once_and_serves_it(trained_run, tmp_path, capsys):
    """Given a trained quickstart run in --work (the session's, copied: training it again is most of the time),
    the script indexes it (a real `xmcore index`, written into a temporary folder then renamed), serves it
    under a second of load and reuses the index on the next call."""
    serve_load, work = _script("serve_load"), tmp_path / "work"
    shutil.copytree(trained_run, work / "quickstart-run")
    rows = tmp_path / "rows.json"
    assert serve_load.main(["--work", str(work), "--seconds", "1", "--rounds", "1", "--clients", "2", "--waits", "2",
                            "--json", str(rows)]) == 0
    index = work / "quickstart-index"
    assert sorted(p.name for p in work.iterdir()) == ["quickstart-index", "quickstart-run"]  # no temporary left
    assert json.loads((index / "manifest.json").read_text())["modalities"]["image"]["count"] > 0
    (row,) = json.loads(rows.read_text())
    assert row["requests"] > 0 and row["errors"] == 0
    assert f"xmcore index {work / 'quickstart-run'}" in capsys.readouterr().out
    built = (index / "manifest.json").stat().st_mtime_ns
    assert serve_load.quickstart_index(work) == index and (index / "manifest.json").stat().st_mtime_ns == built
    assert "(once)" not in capsys.readouterr().out


def test_serve_load_builds_nothing_half_way(tmp_path):
    serve_load = _script("serve_load")

    def failing(tmp):
        tmp.mkdir()
        (tmp / "half.txt").write_text("half")
        raise SystemExit("xmcore index failed")

    with pytest.raises(SystemExit):
        serve_load._built_once(tmp_path / "index", failing)
    assert list(tmp_path.iterdir()) == []
