"""Fuzzed recipes and overrides: thousands of Hypothesis cases through ``xmcore validate``, counted by outcome.

Every case must end with exit 0, or exit 2 and one line per problem -- never a traceback, an exit status of
another kind, or more than 5 s.  The cases (tests/recipe_fuzzing.py) are recipes/*.yaml with values replaced by
wrong types, unicode, huge and negative numbers and deep nesting, their text edited (duplicate lines, YAML tags,
anchors, cuts, stray bytes), random bytes and text, alias bombs, a folder, and random ``key=value`` overrides.
They run in this process, as tests/test_fuzz_recipes.py runs 200 of them.  Then a few hostile files run as real
``xmcore validate`` processes under a 1 GiB address-space limit, with their wall time.

    python bench/fuzz_recipes.py                  # 2,000 cases
    python bench/fuzz_recipes.py --examples 10000 --seed 7

Exit status 1 when a case breaks the rule.
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

HOSTILE = {
    "billion laughs (9 ** 9 values)": "\n".join(
        ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        + [f"l{d}: &l{d} [{', '.join([f'*l{d - 1}'] * 9)}]" for d in range(1, 9)]) + "\n",
    # before the loader's bound, this one ran out of memory under the limit (and past 120 s): timm's model_kwargs
    # takes any data, and --print expands every alias
    "billion laughs in model_kwargs, --print": (
        "data: {name: shapes}\nencoders:\n  text: {name: lstm}\n  image: {name: timm, model_kwargs: {bomb: [&l0 "
        f"[{', '.join(['lol'] * 9)}]"
        + "".join(f", &l{d} [{', '.join([f'*l{d - 1}'] * 9)}]" for d in range(1, 9))
        + "]}}\nfusion: {name: linear}\nloss: {name: infonce}\n"),
    "an alias inside itself": "seed: &a [*a]\n",
    "10,000 levels of nesting": "seed: " + "[" * 10000 + "]" * 10000 + "\n",
    "a 5,000-digit integer": "seed: " + "9" * 5000 + "\n",
    "!!python/object/apply": "seed: !!python/object/apply:os.system ['echo pwned']\n",
    "a 64 MiB file": "#" * (64 << 20) + "\n",
}


def hostile_files(folder: Path) -> list[tuple[str, int, float, str]]:
    """Each hostile file through ``python -m xmcore validate`` in a process of its own, memory-limited."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    rows = []
    for name, text in {"recipes/quickstart.yaml (for comparison)": None, **HOSTILE}.items():
        path = ROOT / "recipes" / "quickstart.yaml" if text is None else folder / "hostile.yaml"
        if text is not None:
            path.write_text(text)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "xmcore", "validate", str(path)] + ["--print"] * ("--print" in name),
                                capture_output=True, text=True,
                                timeout=120, preexec_fn=limit, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        rows.append((name, result.returncode, time.perf_counter() - start, result.stderr.strip().splitlines()[-1][:150]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=2000, help="how many cases (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis's seed (default 0)")
    parser.add_argument("--show", type=int, default=5, help="print up to this many failing cases (default 5)")
    args = parser.parse_args(argv)

    from hypothesis import HealthCheck, Phase, given, seed, settings

    from recipe_fuzzing import cases, run_case

    workdir = tempfile.TemporaryDirectory(prefix="fuzz-recipes-")
    folder = Path(workdir.name)
    counts: collections.Counter[str] = collections.Counter()
    failures = []
    slowest = (0.0, None)

    @seed(args.seed)
    @settings(max_examples=args.examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def one(case):
        nonlocal slowest
        outcome = run_case(case, folder)
        if outcome.problem is not None:
            counts["other"] += 1
            failures.append((case, outcome))
        else:
            counts[f"exit {outcome.code}"] += 1
        if outcome.seconds > slowest[0]:
            slowest = (outcome.seconds, case)

    start = time.perf_counter()
    one()
    wall = time.perf_counter() - start
    total = sum(counts.values())
    print(f"{total} cases in {wall:.0f} s ({1000 * wall / max(total, 1):.0f} ms each, under this machine's load), seed {args.seed}")
    for outcome in ("exit 0", "exit 2", "other"):
        print(f"  {outcome:7s} {counts[outcome]:6d}")
    seconds, case = slowest
    what = "a folder" if case is not None and case.recipe is None else f"{len(case.recipe) if case else 0} bytes"
    print(f"slowest case: {seconds * 1000:.0f} ms ({what}, {len(case.overrides) if case else 0} overrides): {case!r:.300}")
    print(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    for case, outcome in failures[: args.show]:
        print(f"FAILED: {outcome.problem[:300]}\n  case: {case!r:.600}")

    print("hostile files, each `python -m xmcore validate FILE` under a 1 GiB address-space limit:")
    for name, code, secs, line in hostile_files(folder):
        print(f"  {name:40s} exit {code}  {secs:5.2f} s  {line}")
        failures += [name] * (code != (0 if name.startswith("recipes/") else 2))
    workdir.cleanup()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
