"""The recipe schema: loading, ``key=value`` overrides, and validation.

A recipe is YAML (read with ``yaml.safe_load`` only).  Its fixed sections are
declared here as pydantic models; each component section (``data``,
``encoders.<modality>``, ``fusion``, ``loss``, ``augment.<modality>[i]``,
``eval.metrics[i]``) names a component with ``name`` and carries that
component's parameters beside the core's own keys (``batch_size``, ``freeze``,
``dim``).  The parameters are validated against the component's declaration,
so a recipe is checked completely before any weights load or data is read.

Every problem becomes one line ``FILE: dotted.key: what is wrong`` with the
valid choices and the closest match.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from xmcore.errors import RecipeError, did_you_mean
from xmcore.registry import Component, Params, RecipePath, from_working_dir, path_params


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentSection(BaseModel):
    """A section that names a component; the keys the core does not declare go to the component."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="the component's registered name")

    _component: Component | None = PrivateAttr(default=None)
    _params: Params | None = PrivateAttr(default=None)

    @property
    def component(self) -> Component:
        assert self._component is not None, "recipe not validated"
        return self._component

    @property
    def params(self) -> Params:
        assert self._params is not None, "recipe not validated"
        return self._params

    def resolved(self) -> dict[str, Any]:
        core = {k: getattr(self, k) for k in type(self).model_fields}
        return {**_plain(core), **(self._params.model_dump(mode="json") if self._params else self.model_extra)}


class DataSection(ComponentSection):
    batch_size: int = Field(64, gt=0, description="pairs per training (and validation) batch")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    strict: bool = Field(False, description="stop before training on any bad item, instead of skipping it")
    caption_sampling: bool = Field(
        False,
        description="each epoch visits every image once with one of its captions drawn at random "
        "(instead of every caption once)",
    )
    modalities: list[str] | None = Field(
        None,
        min_length=2,
        description="use only these of the dataset's modalities (two or more), e.g. the written and spoken captions [text, speech] of a dataset "
        "of pictures with both (relevance stays by picture); default: all of them",
    )


class EncoderSection(ComponentSection):
    freeze: bool = Field(False, description="keep the encoder's weights fixed (and in eval mode)")


class FusionSection(ComponentSection):
    dim: int = Field(256, gt=0, description="width of the common embedding space")


class ExtraLossSection(ComponentSection):
    weight: float = Field(1.0, ge=0, description="weight of this objective in the total loss")


class LossSection(ComponentSection):
    groups: Literal["relevance", "pair", "label"] = Field(
        "relevance",
        description="what makes two training pairs one group for the losses: 'relevance' as the evaluation judges it "
        "(an image and its captions; a class where the dataset judges by class), 'pair' an image and its own "
        "captions only, 'label' the class labels (the dataset must have them)",
    )
    extra: list[ExtraLossSection] = Field(
        default_factory=list,
        description="more objectives added to the retrieval loss, each a registered loss with a weight, "
        "e.g. [{name: label-ce, weight: 1.0}]",
    )
    pairs: list[tuple[str, str]] | None = Field(
        None,
        description="the modality pairs trained into the common space, losses summed over them, e.g. "
        "[[image, text], [image, speech]]; default: the dataset's first modality with each of the others. "
        "Evaluation reports every direction among the modalities, trained or not",
    )


class AugmentSection(ComponentSection):
    pass


class MetricSection(ComponentSection):
    pass


_SECTION_KIND = {
    DataSection: "dataset",
    EncoderSection: "encoder",
    FusionSection: "fusion",
    LossSection: "loss",
    ExtraLossSection: "loss",
    AugmentSection: "augmentation",
    MetricSection: "metric",
}


class OptimizerSection(_Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, description="sgd only")
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)


PRECISIONS = ("64", "64-true", "32", "32-true", "16", "16-mixed", "16-true", "bf16", "bf16-mixed", "bf16-true",
              "transformer-engine", "transformer-engine-float16")


class TrainerSection(_Section):
    """Passed to ``pytorch_lightning.Trainer`` under Lightning's own argument names.

    The common arguments are declared (and so type-checked, with typo suggestions);
    the Lightning docs describe each.  Callbacks, loggers and ``default_root_dir``
    belong to xmcore, which sets them per run.
    """

    max_epochs: int | None = Field(10, ge=-1)
    min_epochs: int | None = Field(None, ge=0)
    max_steps: int = Field(-1, ge=-1)
    min_steps: int | None = Field(None, ge=0)
    max_time: str | None = Field(None, description="DD:HH:MM:SS")
    accelerator: str = "auto"
    devices: Union[int, str, list[int]] = 1
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    precision: Union[int, str] = "32-true"
    sync_batchnorm: bool | None = None
    gradient_clip_val: float | None = Field(None, ge=0)
    gradient_clip_algorithm: Literal["norm", "value"] | None = None
    accumulate_grad_batches: int = Field(1, ge=1)
    limit_train_batches: Union[int, float] | None = None
    limit_val_batches: Union[int, float] | None = None
    overfit_batches: Union[int, float] | None = None
    val_check_interval: Union[int, float] | None = None
    check_val_every_n_epoch: int | None = 1
    num_sanity_val_steps: int | None = None
    log_every_n_steps: int | None = 10
    enable_progress_bar: bool | None = None
    enable_model_summary: bool | None = None
    deterministic: Union[bool, Literal["warn"]] | None = None
    benchmark: bool | None = None
    detect_anomaly: bool | None = None
    profiler: Literal["simple", "advanced", "pytorch"] | None = None
    fast_dev_run: Union[bool, int] = False

    @field_validator("precision")
    @classmethod
    def _precision(cls, value):
        if str(value) not in PRECISIONS:
            raise ValueError(f"expected one of {', '.join(PRECISIONS)}")
        return value

    @field_validator("devices")
    @classmethod
    def _devices(cls, value):
        if isinstance(value, str) and value != "auto" and not all(p.strip().lstrip("-").isdigit() for p in value.split(",") if p.strip()):
            raise ValueError("expected a count (1, 2, -1 for all), 'auto', a list of device ids [0, 1] or '0,1'")
        return value


DEFAULT_METRICS = [
    {"name": "recall", "k": [1, 5, 10]},
    {"name": "rank"},
    {"name": "map"},
    {"name": "ndcg", "k": [10]},
    {"name": "modality-gap"},
]


class EvalSection(_Section):
    split: str = Field("test", description="the split evaluated after training")
    batch_size: int = Field(256, gt=0)
    every_n_epochs: int = Field(
        1, ge=0, description="compute the metrics on the validation split every N epochs during training (0: never)"
    )
    monitor: str = Field(
        "rsum", description="what selects the best checkpoint: a metric id (validated in the loop) or 'loss'"
    )
    report: bool = Field(True, description="write report.md with figures (curves, R@K, projection, gallery)")
    explain: bool | None = Field(
        None,
        description="the report also explains the gallery's results: the top 4 results of 3 queries under heatmaps "
        "(explained.png). Unset: on where Grad-CAM explains the first modality's encoder (a CNN; under a second); "
        "true: also by occlusion for other encoders (slower); false: off",
    )
    metrics: list[MetricSection] = Field(default_factory=lambda: [MetricSection(**m) for m in DEFAULT_METRICS])
    relevance: Literal["auto", "owner", "label"] = Field(
        "auto",
        description="which items are relevant to a query: 'label' every item of its class (the class-level protocol of "
        "ACMR and DSCMR, read with mAP; the dataset needs labels: csv/jsonl label_column, imagefolder, webdataset .cls), "
        "'owner' an image and its own captions only, even where the dataset judges by class; 'auto' as the dataset "
        "says (by class for imagefolder, else by owner). Validation, checkpoint choice and loss.groups=relevance follow it",
    )
    folds: int = Field(
        0,
        ge=0,
        description="also evaluate this many disjoint folds of eval.fold_size images (the split's first ones, each with "
        "its captions) and report their mean as fold/<id> (fold/i2t/R@1, ...): COCO's 1k protocol is folds 5 on the "
        "5k test split; 0: none",
    )
    fold_size: int = Field(1000, gt=0, description="images (owners) per fold of eval.folds")


class CacheSection(_Section):
    precompute: bool = Field(
        True,
        description="encode the items of frozen, unaugmented encoders once per run instead of in every step "
        "(false: the encoders run in every step, as a plain training loop would)",
    )
    enabled: bool = Field(True, description="cache the features of frozen, unaugmented encoders on disk")
    dir: RecipePath | None = Field(None, description="cache folder; default $XMCORE_CACHE_DIR, else ~/.cache/xmcore/features")


class CheckpointSection(_Section):
    """When ``xmcore run`` writes checkpoints/last.ckpt besides at each validation (Lightning's ModelCheckpoint)."""

    every_n_steps: int | None = Field(
        None, gt=0, description="also write checkpoints/last.ckpt every N optimizer steps, so that a run killed in "
        "mid-epoch resumes (--resume) from there; Lightning's every_n_train_steps; default: at validations only",
    )
    every_minutes: float | None = Field(
        None, gt=0, description="also write checkpoints/last.ckpt every M minutes of training (at the end of a "
        "step); Lightning's train_time_interval; default: at validations only",
    )


class LoggerSection(_Section):
    """One of Lightning's loggers, by name (see :mod:`xmcore.loggers`)."""

    name: Literal["csv", "tensorboard", "mlflow", "wandb"] = Field(
        description="csv: logs/metrics.csv (always written); tensorboard: logs/tensorboard; mlflow: a local store "
        "logs/mlflow.db (or tracking_uri); wandb: offline, logs/wandb"
    )
    experiment: str | None = Field(None, description="mlflow's experiment, wandb's project; default: the recipe's name")
    tracking_uri: str | None = Field(None, description="mlflow only: where runs go (e.g. http://host:5000); default: "
                                     "sqlite:///RUN_DIR/logs/mlflow.db")
    offline: bool = Field(True, description="wandb only: write the run to logs/wandb to sync later (wandb sync), "
                          "instead of sending it")

    @model_validator(mode="after")
    def _options_of_this_logger(self):
        if self.tracking_uri is not None and self.name != "mlflow":
            raise ValueError(f"tracking_uri is an option of the mlflow logger, not of {self.name}")
        if not self.offline and self.name != "wandb":
            raise ValueError(f"offline is an option of the wandb logger, not of {self.name}")
        if self.experiment is not None and self.name not in ("mlflow", "wandb"):
            raise ValueError(f"experiment is an option of the mlflow and wandb loggers, not of {self.name}")
        return self


class Recipe(_Section):
    name: str = Field(
        "recipe", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="names the run directory; defaults to the file's stem"
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds Python, NumPy and torch (Lightning's seed_everything "
                      "takes 0 to 2**32 - 1)")
    data: DataSection
    encoders: dict[str, EncoderSection]
    fusion: FusionSection
    loss: LossSection
    augment: dict[str, list[AugmentSection]] = Field(default_factory=dict)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    trainer: TrainerSection = Field(default_factory=TrainerSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    cache: CacheSection = Field(default_factory=CacheSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    logger: list[LoggerSection] = Field(
        default_factory=lambda: [LoggerSection(name="csv")],
        description="where training logs, the resolved recipe and the final metrics go: a name (tensorboard), a "
        "section ({name: mlflow, experiment: shapes}) or a list of them; logs/metrics.csv is always written",
    )

    @field_validator("logger", mode="before")
    @classmethod
    def _loggers_as_list(cls, value):
        # `logger: tensorboard`, `logger: {name: mlflow}` and `logger: [csv, wandb]` all mean a list of sections
        value = value if isinstance(value, list) else [value]
        return [{"name": v} if isinstance(v, str) else v for v in value]

    def component_sections(self) -> list[tuple[str, ComponentSection]]:
        """Each component section with its dotted path, in build order."""
        out: list[tuple[str, ComponentSection]] = [("data", self.data)]
        out += [(f"augment.{m}.{i}", s) for m, lst in self.augment.items() for i, s in enumerate(lst)]
        out += [(f"encoders.{m}", s) for m, s in self.encoders.items()]
        out += [("fusion", self.fusion), ("loss", self.loss)]
        out += [(f"loss.extra.{i}", s) for i, s in enumerate(self.loss.extra)]
        out += [(f"eval.metrics.{i}", s) for i, s in enumerate(self.eval.metrics)]
        return out

    def resolved(self) -> dict[str, Any]:
        """The full recipe, defaults filled, as plain data (what is written to the run directory)."""
        out: dict[str, Any] = {}
        for key in type(self).model_fields:
            value = getattr(self, key)
            out[key] = _resolve_value(value)
        return out


def _resolve_value(value: Any) -> Any:
    if isinstance(value, ComponentSection):
        return value.resolved()
    if isinstance(value, BaseModel):
        return {k: _resolve_value(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, dict):
        return {k: _resolve_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_value(v) for v in value]
    return value


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _resolve_value(v) for k, v in d.items()}


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedRecipe:
    """A recipe file's raw data, overrides applied, not yet validated."""

    source: str  # the file path as the user gave it (used in messages)
    data: dict[str, Any]
    base_dir: Path
    replaced_names: set[str] = field(default_factory=set)  # sections whose ``name`` an override changed
    overridden: set[str] = field(default_factory=set)  # dotted keys set on the command line

    def typed(self, dotted: str) -> bool:
        """Whether the value at ``dotted`` came from the command line (the key, or a section above it)."""
        return any(dotted == k or dotted.startswith(k + ".") for k in self.overridden)


# A recipe is a few kilobytes of plain data.  These bounds refuse, quickly and with a message, what only a
# generated or hostile file holds: a huge file, nesting that would exhaust the stack, and aliases of
# aliases that expand a small file into billions of values ("billion laughs").
MAX_RECIPE_BYTES = 128 << 10
MAX_YAML_DEPTH = 64
MAX_YAML_VALUES = 100_000
MAX_INT_BITS = 256


class YAMLRefused(yaml.MarkedYAMLError):
    """Valid YAML that a recipe must not be: a duplicate key, or beyond one of the bounds above."""


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (instead of keeping the last silently), bounds
    nesting and the number of values aliases expand to, and turns a scalar it cannot read
    (``2020-13-45``, ``!!int abc``, a 5,000-digit integer) into a YAML error instead of a crash."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._extent: dict[yaml.Node, tuple[int, int]] = {}  # node -> (values, depth) once aliases are expanded
        self._values = 0  # in the document so far, aliases expanded: stops a bomb at its first level too large
        self._aliases = False

    def compose_node(self, parent, index):
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if node not in self._extent:
                raise YAMLRefused(None, None, "an alias inside the section it names (a structure that contains "
                                  "itself); a recipe is plain data", mark)
            self._aliases = True
            self._count(self._extent[node][0], mark)
            return node
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise YAMLRefused(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1, mark)
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        values = 1 + sum(self._extent[c][0] for c in children)
        depth = 1 + max((self._extent[c][1] for c in children), default=0)
        if depth > MAX_YAML_DEPTH:
            raise YAMLRefused(None, None, f"with its aliases expanded this is nested deeper than {MAX_YAML_DEPTH} "
                              "levels", node.start_mark)
        self._extent[node] = (values, depth)
        return node

    def _count(self, values: int, mark) -> None:
        self._values += values
        if self._values > MAX_YAML_VALUES:
            raise YAMLRefused(None, None, f"more than {MAX_YAML_VALUES:,} values"
                              + (" once its aliases are expanded (aliases of aliases?)" if self._aliases else "")
                              + "; a recipe is far smaller", mark)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            # PyYAML's scalar constructors raise these for text their patterns let through
            tag = node.tag.rpartition(":")[2] if node.tag.startswith("tag:yaml.org,2002:") else node.tag
            raise YAMLRefused(None, None, f"cannot read {_clip(repr(node.value), 40)} as {tag}", node.start_mark) from None

    def construct_yaml_int(self, node):
        value = super().construct_yaml_int(node)
        if value.bit_length() > MAX_INT_BITS:
            raise YAMLRefused(None, None, f"an integer of {value.bit_length():,} bits; no setting takes one so large",
                              node.start_mark)
        return value

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then a key of base: an override, as YAML means it
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: SafeLoader's own message says so
                if first is not key_node:
                    (a, b), (c, d) = ((m.line + 1, m.column + 1) for m in (first.start_mark, key_node.start_mark))
                    where = f"first on line {a}, again on line {c}" if a != c else f"twice on line {a}: columns {b} and {d}"
                    raise YAMLRefused(None, None, f"duplicate key {_clip(repr(key), 60)} ({where}); the last would "
                                      "silently win: keep one", key_node.start_mark)
        return super().construct_mapping(node, deep)


RecipeLoader.add_constructor("tag:yaml.org,2002:int", RecipeLoader.construct_yaml_int)


def read_yaml(text: str, source: str, plain_text_ok: bool = False) -> Any:
    """``yaml.safe_load(text)`` with :class:`RecipeLoader`; a problem is a :class:`RecipeError` of one line.

    ``plain_text_ok``: text that is not YAML at all comes back as the string it is (a ``key=value``
    override's value), but refused YAML (a duplicate key, an alias bomb) is still an error."""
    try:
        return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 -- a SafeLoader
    except YAMLRefused as exc:
        mark = exc.problem_mark
        raise _error([f"{source}: line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        if plain_text_ok:
            return text
        mark = getattr(exc, "problem_mark", None)
        if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow (a NUL, a control code)
            line = text.count("\n", 0, exc.position) + 1
            column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
            where, problem = f" (line {line}, column {column})", (
                f"character U+{exc.character:04X} is not allowed in YAML" if isinstance(exc.character, int)
                else f"byte {exc.character!r} is not allowed in YAML")
        else:
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            if "could not determine a constructor for the tag" in problem:
                problem += "; a recipe is plain data: remove the tag"
        raise _error([f"{source}: not valid YAML{where}: {problem}"]) from None


def load_recipe(path: str | Path, overrides: list[str] = ()) -> LoadedRecipe:
    source = str(path)
    p = Path(path)
    if p.is_dir():
        inside = sorted(q.name for q in p.iterdir() if q.suffix in (".yaml", ".yml") and q.is_file())
        hint = f"; it holds {', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''}" if inside else ""
        raise _error([f"{source}: is a folder, not a recipe file; give a YAML file{hint}"
                      f" (e.g. {Path(source) / (inside[0] if inside else 'recipe.yaml')})"])
    if not p.is_file():
        raise _error([f"{source}: no such recipe file (expected a YAML file, e.g. recipes/quickstart.yaml)"])
    try:
        size = p.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise _error([f"{source}: {size:,} bytes, more than a recipe holds (at most {MAX_RECIPE_BYTES:,}); "
                          "is this the recipe file?"])
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _error([f"{source}: not a UTF-8 text file (byte {exc.start} is not UTF-8); expected a YAML recipe"]) from None
    except OSError as exc:
        raise _error([f"{source}: cannot read the recipe: {exc.strerror or exc}"]) from None
    data = read_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _error([f"{source}: expected a mapping of sections (data, encoders, fusion, ...), got {_kind(data)}"])
    data.setdefault("name", p.stem)
    loaded = LoadedRecipe(source, data, p.resolve().parent)
    apply_overrides(loaded, overrides)
    return loaded


def apply_overrides(loaded: LoadedRecipe, overrides: list[str]) -> None:
    """Apply ``dotted.key=value`` overrides; values are parsed as YAML scalars (or flow lists/maps)."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"override '{item}': expected KEY=VALUE with a dotted key, e.g. fusion.name=linear")
            continue
        try:
            value = read_yaml(raw, f"override '{_clip(item)}'", plain_text_ok=True) if raw.strip() else ""
        except RecipeError as exc:
            problems += exc.problems
            continue
        try:
            _set_dotted(loaded.data, key.split("."), value)
        except _OverrideError as exc:
            problems.append(f"override '{item}': {exc}")
            continue
        loaded.overridden.add(key)
        if key.endswith(".name"):
            loaded.replaced_names.add(key.rpartition(".")[0])
    if problems:
        raise _error(problems)


class _OverrideError(Exception):
    pass


def _set_dotted(node: Any, parts: list[str], value: Any) -> None:
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not (part.isascii() and part.isdigit()) or int(part) >= len(node):
                raise _OverrideError(f"'{where}': expected a list index below {len(node)}")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
                return
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise _OverrideError(f"'{'.'.join(parts[:i])}' is {_kind(node)}, not a section")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__
    ) + (f" ({_clip(repr(value))})" if isinstance(value, (str, int, float, bool)) else "")


def _clip(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 5] + "[...]"


MAX_PROBLEMS = 20  # lines of one error; a generated recipe can have thousands of problems


def _error(problems: list[str]) -> RecipeError:
    """A :class:`RecipeError` whose every problem is one printable line, and at most :data:`MAX_PROBLEMS` of them.

    Keys and values from the recipe go into the messages: a newline, a terminal escape or a lone
    surrogate among them would break the line (or the terminal, or the encoding of stderr)."""
    lines = ["".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in p) for p in problems]
    if len(lines) > MAX_PROBLEMS:
        lines = lines[: MAX_PROBLEMS - 1] + [f"... and {len(lines) - MAX_PROBLEMS + 1} more problems"]
    return RecipeError(lines)


# --------------------------------------------------------------------------- validation


def validate(loaded: LoadedRecipe, plugins) -> Recipe:
    """Check the whole recipe against the schema and each named component's parameters."""
    src = loaded.source
    data = copy.deepcopy(loaded.data)
    problems = _unknown_keys(data, Recipe, "")  # reported and removed, so the checks below still run
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems += [_pydantic_problem(e) for e in exc.errors()]
        raise _error([f"{src}: {p}" for p in problems]) from None

    for path, section in recipe.component_sections():
        problems += validate_component(section, path, plugins, loaded)
    if recipe.cache.dir and loaded.typed("cache.dir"):  # the core's own path key follows the same rule
        recipe.cache.dir = from_working_dir(recipe.cache.dir)
    if not recipe.encoders:
        problems.append("encoders: expected one encoder per modality, e.g. encoders.image.name: timm")
    elif recipe.data._component is not None and recipe.data.component.modalities_for(recipe.data.params):
        provided = recipe.data.component.modalities_for(recipe.data.params)
        source = f"dataset '{recipe.data.name}' provides {', '.join(provided)}"
        if recipe.data.modalities:
            unknown = [m for m in recipe.data.modalities if m not in provided]
            if unknown:
                problems.append(f"data.modalities: {source}, not {', '.join(unknown)}")
            provided = [m for m in recipe.data.modalities if m in provided]
            source = f"data.modalities uses {', '.join(provided)}"
        problems += [f"encoders.{m}: missing; {source}: add encoders.{m}.name: ..." for m in provided if m not in recipe.encoders]
        if not recipe.data.modalities:  # with data.modalities, the other modalities' sections are left unused
            problems += [f"encoders.{m}: {source}, not {m}: remove it" for m in recipe.encoders if m not in provided]
        problems += [f"augment.{m}: {source}, not {m}" for m in recipe.augment if m not in provided
                     and not (recipe.data.modalities and m in recipe.data.component.modalities_for(recipe.data.params))]
    if problems:
        raise _error([f"{src}: {p}" for p in problems])
    return recipe


def validate_component(section: ComponentSection, path: str, plugins, loaded: LoadedRecipe | None = None) -> list[str]:
    """Check one component section against its component's declaration; attach params and component."""
    kind = _SECTION_KIND[type(section)]
    registry = plugins[kind]
    if section.name not in registry:
        return [f"{path}.name: {registry.unknown_message(section.name)}"]
    component = registry.get(section.name)
    modality = path.split(".")[1] if kind in ("encoder", "augmentation") else None
    if modality and not component.accepts(modality):
        fits = [c.name for c in registry if c.accepts(modality)]
        return [
            f"{path}.name: {kind} '{section.name}' does not accept modality '{modality}' "
            f"(it accepts: {', '.join(component.modalities)}); {kind}s for {modality}: {', '.join(fits) or 'none'}"
        ]
    extra = dict(section.model_extra or {})
    declared = set(component.params.model_fields)
    if loaded is not None and path in loaded.replaced_names:
        # An override chose another component: parameters the file gave the old one,
        # which the new one does not declare, are dropped -- out loud.  Keys typed on
        # the command line are never dropped: they stay errors.
        typed = {k.rpartition(".")[2] for k in loaded.overridden if k.rpartition(".")[0] == path}
        for key in sorted(set(extra) - declared - typed):
            note = f"note: {path}.{key} dropped: not a parameter of {kind} '{section.name}'"
            print(_error([note]).problems[0], file=sys.stderr, flush=True)
            del extra[key]
    try:
        section._params = component.params.model_validate(extra)
        section._component = component
        if loaded is not None:
            section._params = _typed_paths_from_working_dir(section._params, path, loaded)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            if e["type"] == "extra_forbidden":
                key = e["loc"][0]
                valid = sorted(declared | set(type(section).model_fields))
                problems.append(
                    f"{path}.{key}: unknown parameter of {kind} '{section.name}'; "
                    f"{did_you_mean(key, valid)}valid keys: {', '.join(valid)}"
                )
            else:
                problems.append(_pydantic_problem(e, prefix=path))
        return problems
    return []


def _typed_paths_from_working_dir(params: Params, path: str, loaded: LoadedRecipe) -> Params:
    """Relative paths typed on the command line, made absolute against the working directory.

    Only parameters the component declares as paths (:data:`xmcore.RecipePath`) change; paths written
    in the recipe file stay as written and resolve against its folder when the component is built.
    """
    update: dict[str, Any] = {}
    for key, marker in path_params(type(params)).items():
        value, dotted = getattr(params, key), f"{path}.{key}"
        if isinstance(value, str) and loaded.typed(dotted):
            update[key] = from_working_dir(value, marker)
        elif isinstance(value, (list, tuple)):
            new = [from_working_dir(v, marker) if isinstance(v, str) and loaded.typed(f"{dotted}.{i}") else v
                   for i, v in enumerate(value)]
            if new != list(value):
                update[key] = type(value)(new)
    return params.model_copy(update=update) if update else params


def _pydantic_problem(error: dict[str, Any], prefix: str = "") -> str:
    loc = ".".join([prefix] * bool(prefix) + [str(p) for p in error["loc"]])
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{loc}: required key is missing"
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return f"{loc}: expected a section (a mapping of keys), got {_kind(error.get('input'))}"
    if error["type"] == "list_type":
        return f"{loc}: expected a list, got {_kind(error.get('input'))}"
    got = error.get("input")
    got_text = f", got {_kind(got)}" if not isinstance(got, (dict, list)) or error["type"].endswith("_type") else ""
    if error["type"] == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",")]
        return f"{loc}: expected one of {expected}, got {got!r}; {did_you_mean(got, choices)}".rstrip("; ").rstrip()
    return f"{loc}: {msg[0].lower() + msg[1:]}{got_text}"


def _unknown_keys(data: Any, model: type[BaseModel], path: str) -> list[str]:
    """Unknown keys in fixed sections, with the closest valid key (pydantic says only 'extra input')."""
    if not isinstance(data, dict):
        return []
    problems = []
    fields = model.model_fields
    if model.model_config.get("extra") == "forbid":
        for key in list(data):
            if key not in fields:
                del data[key]
                where = f"{path}.{key}" if path else str(key)
                valid = sorted(fields)
                problems.append(f"{where}: unknown key; {did_you_mean(key, valid)}valid keys: {', '.join(valid)}")
    for key, info in fields.items():
        if key not in data:
            continue
        sub = f"{path}.{key}" if path else key
        ann = info.annotation
        origin = getattr(ann, "__origin__", None)
        args = getattr(ann, "__args__", ())
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            problems += _unknown_keys(data[key], ann, sub)
        elif origin is dict and isinstance(data[key], dict) and isinstance(args[1], type) and issubclass(args[1], BaseModel):
            for k, v in data[key].items():
                problems += _unknown_keys(v, args[1], f"{sub}.{k}")
        elif origin is list and isinstance(data[key], list) and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            for i, v in enumerate(data[key]):
                problems += _unknown_keys(v, args[0], f"{sub}.{i}")
    return problems
