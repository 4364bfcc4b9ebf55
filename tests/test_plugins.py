"""Plugin loading: entry points, third-party packages, duplicates, failures, switching off."""

import json
import os
import types

import pytest

import xmcore
from conftest import ROOT
from xmcore.errors import PluginError
from xmcore.plugins import load_plugins
from xmcore.testing import run_cli, tiny_overrides

FIRST_PARTY = {f"xmcore-{n}" for n in ("datasets", "vision", "text", "fusion", "losses", "metrics", "augment")}


def test_first_party_plugins_arrive_through_entry_points(plugins):
    assert FIRST_PARTY <= set(plugins.infos)
    assert plugins["fusion"].get("linear").plugin == "xmcore-fusion"
    assert plugins["encoder"].get("timm").plugin == "xmcore-vision"
    assert {"lstm", "sentence-transformers", "timm"} <= set(plugins["encoder"].names())
    assert {"infonce", "triplet"} <= set(plugins["loss"].names())


def test_plugins_command_lists_components_with_params():
    result = run_cli("plugins")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "xmcore-fusion 0.1.0\n" in out
    assert "  fusion adversarial:" in out and "disc_weight: float = 1.0" in out
    assert "  encoder timm [image]:" in out
    data = json.loads(run_cli("plugins", "--json").stdout)
    fusion = next(p for p in data if p["name"] == "xmcore-fusion")
    names = [c["name"] for c in fusion["components"]["fusion"]]
    assert names == ["adversarial", "linear", "nonlinear"]
    hidden = next(p for p in fusion["components"]["fusion"][2]["params"] if p["name"] == "hidden")
    assert hidden == {"name": "hidden", "type": "int", "default": 512, "required": False, "help": "width of the hidden layers"}


def test_third_party_package_is_picked_up_and_used_by_name(example_plugin_path, plugins, tmp_path):
    env = {"PYTHONPATH": os.pathsep.join([str(example_plugin_path), os.environ.get("PYTHONPATH", "")])}
    listing = run_cli("plugins", env=env)
    assert "xmcore-example-plugin 0.3.1  (entry point 'example')" in listing.stdout
    assert "fusion gated: Linear projection times a learned per-feature sigmoid gate." in listing.stdout

    recipe = ROOT / "recipes" / "quickstart.yaml"
    out = tmp_path / "run"
    result = run_cli("run", recipe, *tiny_overrides(recipe, plugins), "fusion.name=gated", "--out", out, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "metrics.json").is_file()
    env_json = json.loads((out / "environment.json").read_text())
    assert env_json["plugins"]["xmcore-example-plugin"] == "0.3.1"

    # switched off, its component is unknown -- and the error says so
    off = run_cli("validate", recipe, "fusion.name=gated", env={**env, "XMCORE_DISABLE_PLUGINS": "example"})
    assert off.returncode == 2 and "unknown fusion 'gated'" in off.stderr


def test_disable_env_var(monkeypatch):
    monkeypatch.setenv("XMCORE_DISABLE_PLUGINS", "xmcore-fusion, xmcore-losses")
    loaded = load_plugins()
    assert "xmcore-fusion" not in loaded.infos and "xmcore-losses" not in loaded.infos
    assert len(loaded["fusion"]) == 0 and len(loaded["loss"]) == 0
    assert "timm" in loaded["encoder"]


def test_broken_plugin_is_reported_with_name_and_version(tmp_path):
    dist = tmp_path / "xmcore_broken-9.9.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: xmcore-broken\nVersion: 9.9\n")
    (dist / "entry_points.txt").write_text("[xmcore]\nbroken = xmcore_broken_does_not_exist\n")
    result = run_cli("plugins", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0
    assert "plugin 'broken' (xmcore-broken 9.9) failed to import and is skipped: ModuleNotFoundError" in result.stderr
    assert "FAILED TO IMPORT" in result.stdout
    assert "xmcore-fusion" in result.stdout  # the others still load


def _plugin(**hooks):
    return types.SimpleNamespace(**{name: xmcore.hookimpl(fn) for name, fn in hooks.items()})


def test_duplicate_name_names_both_plugins():
    def register_linear(register):
        register("linear", lambda params, ctx: None)

    with pytest.raises(PluginError) as err:
        load_plugins(extra=[("copycat", _plugin(xmcore_register_fusions=register_linear))])
    assert "fusion 'linear' is registered twice: by plugin 'xmcore-fusion' and by plugin 'copycat'" in str(err.value)


def test_misspelled_hook_fails_at_startup():
    def register(register):
        pass

    with pytest.raises(PluginError) as err:
        load_plugins(extra=[("typo", _plugin(xmcore_register_fusion=register))])
    assert "plugin 'typo'" in str(err.value) and "xmcore_register_fusions" in str(err.value)


def test_params_must_be_declared_with_xmcore_params():
    def register(register):
        register("odd", lambda p, c: None, params=dict)

    with pytest.raises(PluginError, match="expected a subclass of xmcore.Params"):
        load_plugins(extra=[("odd", _plugin(xmcore_register_losses=register))])


def test_unknown_component_message(plugins):
    with pytest.raises(PluginError) as err:
        plugins["fusion"].get("nonlineer")
    assert str(err.value) == (
        "unknown fusion 'nonlineer'; did you mean 'nonlinear'? installed: adversarial, linear, nonlinear "
        "(is the plugin that provides it installed?)"
    )
