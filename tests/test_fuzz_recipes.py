"""Hostile recipes and overrides: every case exits 0, or 2 with one line per problem -- never a traceback.

A fixed, derandomised sample of Hypothesis's cases (tests/recipe_fuzzing.py) runs through ``xmcore validate`` in
this process; bench/fuzz_recipes.py runs thousands.  The named tests below keep the cases the fuzzer (or reading
the loader) found, each as it was found, and the refusals the loader adds: duplicate keys, alias bombs,
nesting, tags that build Python objects, bytes that are not UTF-8.
"""

import time

import pytest
from hypothesis import HealthCheck, given, settings

from conftest import ROOT, cli
from recipe_fuzzing import cases, run_case

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
MINIMAL = "data: {name: shapes, train: 8, val: 4, test: 4}\nencoders: {image: {name: timm}, text: {name: lstm}}\n" \
          "fusion: {name: linear}\nloss: {name: infonce}\n"


@settings(max_examples=200, derandomize=True, database=None, deadline=None,  # recipe_fuzzing.judge bounds the time
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases)
def test_fuzzed_recipes_exit_0_or_2_with_one_line_per_problem(case, tmp_path):
    outcome = run_case(case, tmp_path)
    assert outcome.problem is None, f"{outcome.problem}\nstderr: {outcome.stderr[-2000:]}"


def _validate(capfd, tmp_path, text, *overrides):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    start = time.perf_counter()
    result = cli(capfd, "validate", path, *overrides)
    result.seconds = time.perf_counter() - start
    return result


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_duplicate_key_names_the_key_and_both_lines(capfd, tmp_path):
    text = MINIMAL.replace("fusion: {name: linear}\n", "fusion:\n  name: linear\n  dim: 16\n  hidden: 8\n  dim: 32\n")
    line = _one_error_line(_validate(capfd, tmp_path, text))
    assert "line 7, column 3: duplicate key 'dim' (first on line 5, again on line 7)" in line

    section = _one_error_line(_validate(capfd, tmp_path, MINIMAL + "seed: 1\nloss: {name: triplet}\n"))
    assert "duplicate key 'loss' (first on line 4, again on line 6)" in section

    flow = _one_error_line(_validate(capfd, tmp_path, MINIMAL, "fusion={name: linear, name: nonlinear}"))
    assert "override 'fusion={name: linear, name: nonlinear}': line 1, column 16: duplicate key 'name' " \
        "(twice on line 1: columns 2 and 16)" in flow


def test_merge_key_may_still_override_what_it_merges(capfd, tmp_path):
    # `<<: {...}` then one of its keys is YAML's way to override, not a duplicate
    text = MINIMAL + "eval: {metrics: [{<<: {name: recall, k: [5]}, k: [1]}]}\n"
    result = _validate(capfd, tmp_path, text, "--print")
    assert result.returncode == 0, result.stderr
    assert "- name: recall\n    k:\n    - 1\n" in result.stdout


def test_billion_laughs_is_refused_at_once(capfd, tmp_path):
    levels = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"l{d}: &l{d} [{', '.join([f'*l{d - 1}'] * 9)}]" for d in range(1, 9)]  # 9 ** 9: 387 million values
    text = "\n".join(levels) + "\n" + MINIMAL.replace("fusion: {name: linear}", "fusion: {name: linear, hidden: *l8}")
    result = _validate(capfd, tmp_path, text)
    line = _one_error_line(result)
    assert "line 6, column 10: more than 100,000 values once its aliases are expanded (aliases of aliases?)" in line
    assert result.seconds < 2

    bomb = "[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], " \
           "&d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d], [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]]"
    line = _one_error_line(_validate(capfd, tmp_path, MINIMAL, f"loss.pairs={bomb}"))
    assert "override 'loss.pairs=[&a" in line and "more than 100,000 values once its aliases are expanded" in line


def test_a_structure_that_contains_itself_is_refused(capfd, tmp_path):
    line = _one_error_line(_validate(capfd, tmp_path, MINIMAL + "trainer: &t {devices: [*t]}\n"))
    assert "line 5, column 24: an alias inside the section it names" in line


def test_nesting_is_bounded(capfd, tmp_path):
    # found by the fuzzer: 1,000 levels was a RecursionError out of PyYAML's composer
    line = _one_error_line(_validate(capfd, tmp_path, MINIMAL + "seed: " + "[" * 1000 + "]" * 1000 + "\n"))
    assert "line 5, column 70: nested deeper than 64 levels" in line
    line = _one_error_line(_validate(capfd, tmp_path, MINIMAL, "loss.pairs=" + "[" * 500 + "]" * 500))
    assert "nested deeper than 64 levels" in line
    deep_alias = "x: &x " + "[" * 40 + "]" * 40 + "\n"  # 40 levels, under another 40 once expanded
    line = _one_error_line(_validate(capfd, tmp_path, deep_alias.replace("x:", "x-deep:") + MINIMAL.replace(
        "loss: {name: infonce}", "loss: {name: infonce, pairs: " + "[" * 40 + "*x" + "]" * 40 + "}")))
    assert "with its aliases expanded this is nested deeper than 64 levels" in line


def test_bytes_that_are_not_utf8(capfd, tmp_path):
    line = _one_error_line(_validate(capfd, tmp_path, MINIMAL.encode() + b"seed: \xff\xfe\n"))
    assert line.endswith(f"recipe.yaml: not a UTF-8 text file (byte {len(MINIMAL) + 6} is not UTF-8); expected a YAML recipe")
    utf16 = _one_error_line(_validate(capfd, tmp_path, MINIMAL.encode("utf-16")))
    assert "not a UTF-8 text file (byte 0" in utf16


def test_python_tags_build_nothing(capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for tag in ("!!python/object/apply:os.system ['touch pwned']", "!!python/name:os.getcwd",
                "!!python/object:xmcore.recipe.Recipe {}"):
        line = _one_error_line(_validate(capfd, tmp_path, MINIMAL + f"seed: {tag}\n"))
        assert "not valid YAML (line 5, column 7): could not determine a constructor for the tag" in line
        assert line.endswith("; a recipe is plain data: remove the tag")
    assert not (tmp_path / "pwned").exists()
    # in an override the tag is not YAML the loader builds either: the value stays the text it is
    line = _one_error_line(_validate(capfd, tmp_path, MINIMAL, "seed=!!python/object/apply:os.system ['touch pwned']"))
    assert "seed: input should be a valid integer" in line and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("value, expected", [
    ("2020-13-45", "cannot read '2020-13-45' as timestamp"),  # month 13: a ValueError out of PyYAML
    ("!!bool maybe", "cannot read 'maybe' as bool"),  # a KeyError
    ("!!float abc", "cannot read 'abc' as float"),
    ("!!timestamp abc", "cannot read 'abc' as timestamp"),  # an AttributeError
    ("0x_", "cannot read '0x_' as int"),
    ("2001-12-14t21:59:43.10-25:00", "cannot read '2001-12-14t21:59:43.10-25:00' as timestamp"),  # offset of 25 h
])
def test_a_scalar_pyyaml_cannot_read_is_a_message(value, expected, capfd, tmp_path):
    # found by the fuzzer, in overrides (seed=2020-13-45) and in files alike
    assert expected in _one_error_line(_validate(capfd, tmp_path, MINIMAL, f"seed={value}"))
    assert expected in _one_error_line(_validate(capfd, tmp_path, MINIMAL + f"seed: {value}\n"))


def test_huge_integers(capfd, tmp_path):
    # found by the fuzzer: 5,000 digits were a ValueError (Python's limit on int-from-text) out of PyYAML
    line = _one_error_line(_validate(capfd, tmp_path, MINIMAL, "seed=" + "9" * 5000))
    assert f"override 'seed={'9' * 70}[...]': line 1, column 1: cannot read '{'9' * 34}[...] as int" in line
    # an integer PyYAML reads, too large for any setting (and for the decimal text of a message)
    line = _one_error_line(_validate(capfd, tmp_path, MINIMAL + "seed: 0x" + "f" * 20000 + "\n"))
    assert "line 5, column 7: an integer of 80,000 bits; no setting takes one so large" in line
    fits = _validate(capfd, tmp_path, MINIMAL, f"trainer.max_steps={2 ** 62}")
    assert fits.returncode == 0, fits.stderr


def test_keys_with_line_breaks_and_escapes_stay_on_one_line(capfd, tmp_path):
    # found by the fuzzer: a key with a newline, \x85 or \u2028 split its problem over two lines
    line = _one_error_line(_validate(capfd, tmp_path, MINIMAL + '"se\\ned\\x85\\u2028\\e[31m": 1\n'))
    assert "recipe.yaml: se\\ned\\x85\\u2028\\x1b[31m: unknown key" in line
    line = _one_error_line(_validate(capfd, tmp_path, MINIMAL, "a\x0cb"))
    assert line == "error: override 'a\\x0cb': expected KEY=VALUE with a dotted key, e.g. fusion.name=linear"


def test_a_character_yaml_forbids_is_one_line(capfd, tmp_path):
    # found by the fuzzer: PyYAML's message for a control character was two lines
    line = _one_error_line(_validate(capfd, tmp_path, MINIMAL + "seed: \x16\n"))
    assert line.endswith("not valid YAML (line 5, column 7): character U+0016 is not allowed in YAML")


def test_list_index_in_unicode_digits(capfd, tmp_path):
    # '²'.isdigit() is true and int('²') a ValueError: an override's list index must be ASCII digits
    line = _one_error_line(cli(capfd, "validate", QUICKSTART, "eval.metrics.\u00b2.k=[1]"))
    assert line == "error: override 'eval.metrics.\u00b2.k=[1]': 'eval.metrics.\u00b2': expected a list index below 4"


def test_many_problems_are_capped(capfd, tmp_path):
    result = _validate(capfd, tmp_path, MINIMAL, *(f"trainer.x{i}=1" for i in range(50)))
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and lines[0] == "error:" and len(lines) == 21
    assert lines[-1] == "... and 31 more problems"


def test_a_huge_file_is_refused_before_it_is_read(capfd, tmp_path):
    result = _validate(capfd, tmp_path, MINIMAL + "#" * (1 << 20) + "\n")
    size = len(MINIMAL) + (1 << 20) + 1
    assert _one_error_line(result).endswith(
        f"recipe.yaml: {size:,} bytes, more than a recipe holds (at most 131,072); is this the recipe file?")
    assert result.seconds < 2


def test_empty_file_and_folder(capfd, tmp_path):
    empty = _validate(capfd, tmp_path, b"")
    assert empty.returncode == 2 and "recipe.yaml: data: required key is missing" in empty.stderr
    folder = tmp_path / "recipes"
    folder.mkdir()
    line = _one_error_line(cli(capfd, "validate", folder))
    assert "recipes: is a folder, not a recipe file; give a YAML file" in line


def test_a_sweep_reads_recipes_the_same_way(capfd, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(MINIMAL + "seed: 1\nseed: 2\n")
    line = _one_error_line(cli(capfd, "sweep", path, "fusion.name=linear,nonlinear", "--out", tmp_path / "sweep"))
    assert "duplicate key 'seed' (first on line 5, again on line 6)" in line
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_a_seed_lightning_refuses_is_refused_by_validate(seed, capfd, tmp_path):
    # validate said ok, and `xmcore run` then failed in Lightning's seed_everything with a traceback
    line = _one_error_line(_validate(capfd, tmp_path, MINIMAL, f"seed={seed}"))
    assert "recipe.yaml: seed: input should be" in line
