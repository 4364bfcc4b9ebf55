"""The core never imports a plugin: plugins depend on xmcore, never the other way round."""

import ast

from conftest import ROOT


def plugin_packages():
    return {p.name for d in (ROOT / "plugins").iterdir() for p in d.iterdir() if (p / "__init__.py").is_file()}


def imported_modules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_core_never_imports_plugins():
    forbidden = plugin_packages() | {"plugins"}
    assert {"xmcore_fusion", "xmcore_vision", "xmcore_text"} <= forbidden
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "xmcore").rglob("*.py"))
        for name in imported_modules(path)
        if name.split(".")[0] in forbidden
    ]
    assert not offenders, offenders


def test_each_plugin_is_its_own_distribution_with_an_entry_point():
    import tomllib

    for folder in sorted((ROOT / "plugins").iterdir()):
        meta = tomllib.loads((folder / "pyproject.toml").read_text())
        entry_points = meta["project"]["entry-points"]["xmcore"]
        # one import package per distribution; more entry points name its modules (parts a user may switch off)
        (package,) = {module.split(".")[0] for module in entry_points.values()}
        assert package.startswith("xmcore_") and (folder / package / "__init__.py").is_file(), folder
        for module in entry_points.values():
            path = folder / module.replace(".", "/")
            assert (path / "__init__.py").is_file() or path.with_suffix(".py").is_file(), (folder, module)


def test_the_core_names_no_plugin_modality():
    """Modalities are names a dataset gives: the core knows images and text (its first plugins' pair) and
    nothing of the ones other plugins bring, so a new modality needs no change in xmcore/."""
    named = [f"{path.relative_to(ROOT)}:{n}" for path in sorted((ROOT / "xmcore").rglob("*.py"))
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "audio" in line.lower()]
    assert named == []
