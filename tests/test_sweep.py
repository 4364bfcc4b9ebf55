"""xmcore sweep: a grid of cells, mean and spread over seeds, failed cells reported."""

import json
import statistics

import pytest

from conftest import ROOT, cli
from xmcore.sweep import grid, split_values
from xmcore.testing import tiny_overrides


def test_grid_parsing():
    assert split_values("linear,nonlinear") == ["linear", "nonlinear"]
    assert split_values("[1,5],[1,10]") == ["[1,5]", "[1,10]"]
    keys, cells = grid(["fusion.name=a,b", "seed=0,1"])
    assert keys == ["fusion.name", "seed"] and len(cells) == 4 and cells[1] == ["fusion.name=a", "seed=1"]


def test_a_grid_over_the_bound_is_refused_before_anything_runs(tmp_path, capfd):
    from xmcore.sweep import MAX_RUNS

    recipe = ROOT / "recipes" / "quickstart.yaml"
    seeds = ",".join(str(i) for i in range(MAX_RUNS + 1))
    # no_such_key: should the bound not hold, the sweep stops at validation instead of training
    result = cli(capfd, "sweep", recipe, f"seed={seeds}", "no_such_key=1", "--out", tmp_path / "sweep")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"the grid has {MAX_RUNS + 1} cells (seed ({MAX_RUNS + 1} values))" in result.stderr
    assert f"bound of {MAX_RUNS} runs" in result.stderr and f"--max-runs {MAX_RUNS + 1}" in result.stderr
    assert not (tmp_path / "sweep").exists()

    axes = ["fusion.name=linear,nonlinear,adversarial", "seed=0,1,2"]
    small = cli(capfd, "sweep", recipe, *axes, "no_such_key=1", "--max-runs", 8, "--out", tmp_path / "sweep")
    assert small.returncode == 2 and "9 cells (fusion.name (3 values) x seed (3 values))" in small.stderr
    # --max-runs 9 lets the grid through: the next check (every cell validated) is what stops it now
    raised = cli(capfd, "sweep", recipe, *axes, "no_such_key=1", "--max-runs", 9, "--out", tmp_path / "sweep")
    assert raised.returncode == 2 and "cells" not in raised.stderr and "no_such_key" in raised.stderr
    assert "--max-runs: expected a positive number" in cli(capfd, "sweep", recipe, *axes, "--max-runs", 0).stderr
    assert not (tmp_path / "sweep").exists()


def test_sweep_runs_the_grid_and_keeps_going_after_a_failure(plugins, tmp_path, capfd):
    recipe = tmp_path / "r.yaml"
    recipe.write_text((ROOT / "recipes" / "quickstart.yaml").read_text())
    tiny = tiny_overrides(recipe, plugins)
    # the tiny overrides become a recipe of their own, so that the sweep's axes are all that vary
    base = tmp_path / "tiny.yaml"
    shown = cli(capfd, "validate", recipe, *tiny, "--print")
    base.write_text(shown.stdout)
    # one cell fails at run time (no TPU here); the others run
    result = cli(capfd, "sweep", base, "fusion.name=linear,adversarial", "seed=0,1", "trainer.accelerator=cpu,tpu",
                     "--out", tmp_path / "sweep")
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert len(data["cells"]) == 8
    assert sum("error" in c for c in data["cells"]) == 4 and sum("metrics" in c for c in data["cells"]) == 4
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    linear_cpu = next(s for s in summary if s["setting"] == {"fusion.name": "linear", "trainer.accelerator": "cpu"})
    assert linear_cpu["runs"] == 2 and linear_cpu["metrics"]["rsum"]["n"] == 2
    # every mean and std in summary.json, recomputed from the cells sweep.json recorded
    spread = False
    for entry in summary:
        cells = [c["metrics"] for c in data["cells"] if "metrics" in c
                 and all(c["cell"][k] == v for k, v in entry["setting"].items())]
        assert entry["runs"] == len(cells)
        assert set(entry["metrics"]) == (set(cells[0]) if cells else set())
        for metric, stat in entry["metrics"].items():
            values = [m[metric] for m in cells]
            assert stat["n"] == len(values) == 2
            assert stat["mean"] == pytest.approx(statistics.mean(values), abs=1e-12)
            assert stat["std"] == pytest.approx(statistics.stdev(values), abs=1e-12)  # the sample std, over seeds
            spread = spread or stat["std"] > 0
    assert spread  # the two seeds differ somewhere: the std check above can tell a wrong spread
    assert "± " in (tmp_path / "sweep" / "sweep.md").read_text() and (tmp_path / "sweep" / "sweep.png").is_file()
    assert "Failed cells" in result.stdout
