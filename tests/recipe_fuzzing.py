"""Hypothesis strategies for hostile recipes and ``key=value`` overrides, and the rule every case must keep.

Shared by tests/test_fuzz_recipes.py (a fixed, derandomised sample in CI) and bench/fuzz_recipes.py (thousands).
A case is the argument list of ``xmcore validate`` plus the bytes of the recipe file; it is run in process
through :func:`xmcore.cli.main`, the same loading and validation path ``xmcore run`` takes before training.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
SEEDS = {p.name: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "recipes").glob("*.yaml"))}


def _paths(node, prefix=()):
    """Every dotted path of a recipe's data (sections and values)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix + (str(k),)
            yield from _paths(v, prefix + (str(k),))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield prefix + (str(i),)
            yield from _paths(v, prefix + (str(i),))


KNOWN_PATHS = sorted({".".join(p) for seed in SEEDS.values() for p in _paths(seed)})
KNOWN_KEYS = sorted({p.rpartition(".")[2] for p in KNOWN_PATHS})

# Values that break schemas: wrong types, edges of numbers, unicode (controls, surrogates, right-to-left,
# line separators), YAML-looking strings.
awkward_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", " ", "null", "~", "yes", "no", "on", "0x1F", "1e999", ".nan", "-.inf", "2020-13-45", "1:2:3",
                     "../../etc/passwd", "/dev/zero", "\u202eevil", "a\u2028b", "\x1b[31mred", "\ud800", "é" * 50,
                     "*alias", "&anchor x", "!!python/object:os.system", "{a: 1, a: 2}", "[" * 100, "='", "\x00"]),
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, awkward_text, st.dates())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(awkward_text, st.sampled_from(KNOWN_KEYS)), inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def deep(draw):
    """A list or mapping nested from 1 to 200 levels."""
    depth = draw(st.integers(1, 200))
    value = draw(scalars)
    for _ in range(depth):
        value = [value] if draw(st.booleans()) else {draw(st.sampled_from(KNOWN_KEYS)): value}
    return value


any_value = st.one_of(values, deep())


def _set(data, parts, value):
    node = data
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {}) if isinstance(node.get(part), (dict, list)) or part not in node else node[part]
        else:
            return
    if isinstance(node, dict):
        node[parts[-1]] = value
    elif isinstance(node, list) and parts[-1].isdigit() and int(parts[-1]) < len(node):
        node[int(parts[-1])] = value


def _dump(data) -> str:
    try:
        return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    except (yaml.YAMLError, ValueError, UnicodeError):  # a value the emitter cannot write: write it as a string
        return yaml.safe_dump({"value": repr(data)})


@st.composite
def mutated_recipe(draw) -> bytes:
    """One of recipes/*.yaml with values replaced or added at known and random paths, keys deleted, and then
    its text edited: a line repeated (a duplicate key), a tag, an anchor with aliases, a cut, stray bytes."""
    import copy

    data = copy.deepcopy(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 4))):
        path = draw(st.one_of(st.sampled_from(KNOWN_PATHS), st.lists(st.sampled_from(KNOWN_KEYS) | awkward_text,
                                                                     min_size=1, max_size=4).map(".".join)))
        if draw(st.integers(0, 4)) == 0:
            parent, _, key = path.rpartition(".")
            node = data
            for part in parent.split(".") if parent else []:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(key, None)
        else:
            _set(data, path.split("."), draw(any_value))
    text = _dump(data)
    lines = text.splitlines(keepends=True) or ["\n"]
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        edit = draw(st.sampled_from(["repeat", "tag", "anchor", "cut", "bytes", "indent", "none"]))
        if edit == "repeat":
            lines.insert(draw(st.integers(i, len(lines))), lines[i])
        elif edit == "tag" and ":" in lines[i]:
            key, _, rest = lines[i].partition(":")
            tag = draw(st.sampled_from(["!!python/object:os.system", "!!python/object/apply:os.system", "!!python/name:os.getcwd",
                                        "!!int", "!!float", "!!bool", "!!timestamp", "!!binary", "!!set", "!!omap", "!!str",
                                        "!custom", "!<tag:yaml.org,2002:python/tuple>"]))
            lines[i] = f"{key}: {tag}{rest}"
        elif edit == "anchor" and ":" in lines[i]:
            key, _, rest = lines[i].partition(":")
            lines[i] = f"{key}: &a{rest}"
            lines.insert(draw(st.integers(i + 1, len(lines))), f"{draw(st.sampled_from(KNOWN_KEYS))}: *a\n")
        elif edit == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif edit == "indent":
            lines[i] = " " * draw(st.integers(1, 5)) + lines[i]
        elif edit == "bytes":
            lines[i] = lines[i] + draw(st.binary(min_size=1, max_size=4)).decode("latin-1")
    raw = "".join(lines).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:  # bytes that are not UTF-8 at a random place
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xfe\xff", b"\x00"])) + raw[at:]
    return raw


@st.composite
def alias_bomb(draw) -> bytes:
    """'Billion laughs': each level a list of the previous one, ``width ** depth`` values once expanded;
    sometimes a structure that contains itself."""
    width, depth = draw(st.integers(2, 12)), draw(st.integers(1, 12))
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{d}: &l{d} [{', '.join([f'*l{d - 1}'] * width)}]" for d in range(1, depth)]
    where = draw(st.sampled_from(["top", "data", "loss.pairs", "eval.metrics", "trainer.devices", "recursive"]))
    if where == "recursive":
        lines.append("seed: &r [*r]")
    elif where != "top":
        section, _, key = where.rpartition(".")
        lines.append(f"{section or where}: {{name: shapes, {key or 'x'}: *l{depth - 1}}}")
    return ("\n".join(lines) + "\n").encode()


@st.composite
def near_valid_recipe(draw) -> bytes:
    """One of recipes/*.yaml with one value at a known path replaced by a scalar: mostly valid, so validation
    goes all the way through the components' parameters."""
    import copy

    data = copy.deepcopy(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    if draw(st.booleans()):
        _set(data, draw(st.sampled_from(KNOWN_PATHS)).split("."), draw(scalars))
    return _dump(data).encode("utf-8", "surrogatepass")


def _declared() -> dict[str, dict[str, list[str]]]:
    """kind -> component name -> its declared parameters, from the installed plugins."""
    from xmcore.plugins import load_plugins

    plugins = load_plugins()
    return {kind: {c.name: sorted(c.params.model_fields) for c in plugins[kind]}
            for kind in ("dataset", "encoder", "fusion", "loss", "augmentation", "metric")}


DECLARED = _declared()
SECTIONS = {"data": "dataset", "encoders.image": "encoder", "encoders.text": "encoder", "fusion": "fusion",
            "loss": "loss", "loss.extra.0": "loss", "augment.image.0": "augmentation", "augment.text.0": "augmentation",
            "eval.metrics.0": "metric"}


@st.composite
def component_recipe(draw) -> bytes:
    """recipes/quickstart.yaml with one section naming any installed component of its kind and giving some of that
    component's declared parameters random values: the parameter validators of every plugin."""
    import copy

    data = copy.deepcopy(SEEDS["quickstart.yaml"])
    path = draw(st.sampled_from(sorted(SECTIONS)))
    components = DECLARED[SECTIONS[path]]
    name = draw(st.sampled_from(sorted(components)))
    section = {"name": name}
    for key in draw(st.lists(st.sampled_from(components[name]), max_size=3, unique=True)) if components[name] else []:
        section[key] = draw(st.one_of(scalars, values))
    parts = path.split(".")
    if parts[-1] == "0":  # a list of sections: loss.extra, augment.<modality>, eval.metrics
        holder = data
        for part in parts[:-2]:
            holder = holder.setdefault(part, {})
        holder[parts[-2]] = [section]
    else:
        _set(data, parts, section)
    return _dump(data).encode("utf-8", "surrogatepass")


raw_document = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.just(b""),
    st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"---\n---\n", b"...", b"%YAML 1.1\n---\n{}", b"!!python/object:os.system {}",
                     b"- a\n- b\n", b"? [a]\n: b\n", b"a: b: c", b"{", b"\t"]),
)


@st.composite
def overrides(draw) -> list[str]:
    """``KEY=VALUE`` words: known and random dotted keys; values as YAML (flow style) or as random text."""
    out = []
    if draw(st.booleans()):  # none half of the time: the recipe file alone
        return out
    if draw(st.booleans()):  # a plausible one: a known key, a scalar
        out.append(f"{draw(st.sampled_from(KNOWN_PATHS))}={_dump(draw(scalars)).strip().splitlines()[0]}")
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.one_of(st.sampled_from(KNOWN_PATHS), st.sampled_from(KNOWN_PATHS).map(lambda p: p + ".x"),
                             st.text(max_size=12).filter(lambda k: not k.startswith("-"))))
        value = draw(st.one_of(
            any_value.map(lambda v: _dump(v).strip().replace("\n", " ") if not isinstance(v, (dict, list))
                          else yaml.safe_dump(v, default_flow_style=True, width=10**6).strip() if _dumpable(v) else "x"),
            awkward_text,
            st.sampled_from(["{a: 1, a: 2}", "[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
                             "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], "
                             "[*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]]", "9" * 5000, "0x" + "f" * 200, "!!python/object:os.system",
                             "2020-13-45", "!!bool maybe", "[" * 500 + "]" * 500]),
        ))
        out.append(f"{key}={value}" if draw(st.integers(0, 9)) else key)
    return out


def _dumpable(value) -> bool:
    try:
        yaml.safe_dump(value)
        return True
    except Exception:  # noqa: BLE001 -- any value the emitter refuses
        return False


@dataclass
class Case:
    recipe: bytes | None  # None: the recipe path is a folder
    overrides: list[str]
    show: bool  # --print


cases = st.builds(
    Case,
    recipe=st.one_of(near_valid_recipe(), component_recipe(), mutated_recipe(), mutated_recipe(), raw_document, alias_bomb(),
                     st.none()),
    overrides=overrides(),
    show=st.booleans(),
)


# --------------------------------------------------------------------------- running a case and judging it


@dataclass
class Outcome:
    code: object  # the exit status, or the exception that escaped main()
    stdout: str
    stderr: str
    seconds: float
    problem: str | None  # None: the case kept the rule


def run_case(case: Case, folder: Path) -> Outcome:
    """``xmcore validate RECIPE OVERRIDES [--print]`` in this process, with the recipe written under ``folder``."""
    from xmcore.cli import main

    path = folder / "recipe.yaml"
    if path.is_dir():
        path.rmdir()
    elif path.exists():
        path.unlink()
    if case.recipe is None:
        path.mkdir()
    else:
        path.write_bytes(case.recipe)
    argv = ["validate", str(path), *case.overrides] + ["--print"] * case.show
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code: object = main(argv)
            except SystemExit as exit_:  # argparse's own errors
                code = exit_.code
    except Exception as exc:  # noqa: BLE001 -- what the rule forbids: an exception out of main, a traceback
        code = exc
    seconds = time.perf_counter() - start
    return Outcome(code, out.getvalue(), err.getvalue(), seconds, judge(code, err.getvalue(), str(path), seconds))


MAX_SECONDS = 10.0  # generous: CI machines are shared; the bench prints the slowest case


def judge(code, stderr: str, source: str, seconds: float = 0.0) -> str | None:
    """What is wrong with an outcome, or None: exit 0 ('ok'), or exit 2 with one line per problem, no traceback."""
    from xmcore.recipe import MAX_PROBLEMS

    if isinstance(code, BaseException):
        return f"{type(code).__name__} escaped main(): {code}"
    if "Traceback" in stderr:
        return "a traceback on stderr"
    if code not in (0, 2):
        return f"exit status {code}"
    if seconds > MAX_SECONDS:
        return f"took {seconds:.1f} s"
    lines = [line for line in stderr.splitlines() if not line.startswith("note: ")]
    if code == 0:
        return None if lines == [f"{source}: ok"] else f"exit 0 but stderr is {stderr[-300:]!r}"
    if lines and lines[-1].startswith(("xmcore: error: ", "xmcore validate: error: ")):
        return None  # argparse: its usage lines, then one line
    if len(lines) == 1 and lines[0].startswith("error: "):
        return None
    if (len(lines) >= 2 and lines[0] == "error:" and len(lines) <= MAX_PROBLEMS + 1
            and all(line.startswith((source, "override '", "... and ")) for line in lines[1:])):
        return None
    return f"not one line per problem: {stderr[-500:]!r}"
