"""The plugin manager: loads every plugin through the ``xmcore`` entry-point group.

First-party plugins (``plugins/`` in the repository) arrive through exactly the
same path as third-party packages.  A manager is built per run -- no import-time
global state -- so tests can build as many as they like.

``XMCORE_DISABLE_PLUGINS`` (comma-separated entry-point or distribution names)
switches plugins off.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Iterable

import pluggy

from xmcore import hookspecs
from xmcore.errors import PluginError
from xmcore.registry import KINDS, Registry

ENTRY_POINT_GROUP = "xmcore"
DISABLE_ENV = "XMCORE_DISABLE_PLUGINS"

_HOOK_FOR_KIND = {
    "dataset": "xmcore_register_datasets",
    "augmentation": "xmcore_register_augmentations",
    "encoder": "xmcore_register_encoders",
    "fusion": "xmcore_register_fusions",
    "loss": "xmcore_register_losses",
    "metric": "xmcore_register_metrics",
    "explainer": "xmcore_register_explainers",
}


@dataclass
class PluginInfo:
    name: str  # the entry-point name
    distribution: str
    version: str
    module: str
    error: str | None = None  # set when the plugin failed to import


@dataclass
class Plugins:
    """Loaded plugins and the registries they filled."""

    pm: pluggy.PluginManager
    registries: dict[str, Registry]
    infos: dict[str, PluginInfo] = field(default_factory=dict)

    def __getitem__(self, kind: str) -> Registry:
        return self.registries[kind]

    @property
    def failed(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if i.error]


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:  # a hook implementation with a wrong signature
        raise PluginError(f"plugin '{name}': {exc}") from None
    except ValueError as exc:  # the same module under two entry-point names
        raise PluginError(f"plugin '{name}' cannot be registered: {exc}") from None


def disabled_names(env: str | None = None) -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "") if env is None else env
    return {n.strip() for n in raw.split(",") if n.strip()}


def load_plugins(extra: Iterable[tuple[str, ModuleType | object]] = (), warn=None) -> Plugins:
    """Build a plugin manager, load the entry points, and fill one registry per kind.

    ``extra`` registers additional (name, plugin object) pairs -- for tests and
    for programs that embed xmcore.  A plugin that fails to import is reported
    (name, distribution and version) through ``warn`` and skipped, so the others
    still work; a recipe that names one of its components then gets an
    "unknown ..." error.
    """
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    disabled = disabled_names()
    infos: dict[str, PluginInfo] = {}

    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        if ep.name in disabled or dist in disabled:
            continue
        if ep.name in infos:
            raise PluginError(
                f"two plugins share the entry-point name '{ep.name}': {infos[ep.name].distribution} and {dist}; "
                "uninstall one, or switch it off with XMCORE_DISABLE_PLUGINS=<distribution name>"
            )
        info = PluginInfo(ep.name, dist, version, ep.value)
        infos[ep.name] = info
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 -- any import failure is reported the same way
            info.error = f"{type(exc).__name__}: {exc}"
            warn(f"plugin '{ep.name}' ({dist} {version}) failed to import and is skipped: {info.error}")
            continue
        _register(pm, plugin, ep.name)

    for name, plugin in extra:
        if name in disabled:
            continue
        _register(pm, plugin, name)
        infos.setdefault(name, PluginInfo(name, name, "?", getattr(plugin, "__name__", repr(plugin))))

    # A misspelled hook implementation (xmcore_register_fusion) fails here, at start-up.
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        hooks = ", ".join(sorted(h for h in dir(hookspecs) if h.startswith("xmcore_")))
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(f"plugin '{name}': {exc}; xmcore's hooks are: {hooks}") from None

    registries = {kind: Registry(kind) for kind in KINDS}
    for kind in KINDS:
        hook = getattr(pm.hook, _HOOK_FOR_KIND[kind])
        # Call the implementations one by one, rather than through hook(...),
        # so that every registration is attributed to the plugin that made it.
        for impl in hook.get_hookimpls():  # in registration order
            impl.function(register=registries[kind].register_for(impl.plugin_name))
    return Plugins(pm, registries, infos)
