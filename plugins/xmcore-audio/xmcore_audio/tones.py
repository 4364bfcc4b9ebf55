"""``tones``: generated clips of 1-3 synthetic sound events in order, with captions that name them.

The audio counterpart of ``shapes``.  Each clip holds a sequence of events --
beeps at a low, mid or high pitch, rising and falling chirps, noise bursts, click
trains, buzzes and warbles, each short or long -- separated by short silences,
over a little background noise.  Its captions name every event and their order
("a short high beep followed by a long falling chirp") in several paraphrases.
Generated with numpy, in memory (no files), deterministic for the ``seed``
parameter; a few thousand clips take about a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xmcore.data import RetrievalData, Split, distinct_captions, generated_splits
from xmcore_audio.items import Clip

BEEP_HZ = {"low": (250.0, 330.0), "mid": (650.0, 850.0), "high": (1700.0, 2100.0)}
DURATION_S = {"short": (0.12, 0.2), "long": (0.4, 0.55)}


def _phase(freq: np.ndarray, rate: int) -> np.ndarray:
    return 2 * np.pi * np.cumsum(freq) / rate


def _beep(pitch: str):
    def make(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
        f = rng.uniform(*BEEP_HZ[pitch])
        return np.sin(2 * np.pi * f * np.arange(n) / rate)

    return make


def _chirp(rising: bool):
    def make(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
        lo, hi = rng.uniform(250, 400), rng.uniform(1800, 2400)
        freq = np.geomspace(lo, hi, n) if rising else np.geomspace(hi, lo, n)
        return np.sin(_phase(freq, rate))

    return make


def _noise(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.normal(0, 0.5, n), -1, 1)


def _clicks(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    period = int(rate / rng.uniform(14, 20))
    width = max(1, rate // 1000)
    for start in range(0, n - width, period):
        out[start : start + width] = rng.choice([-1.0, 1.0])
    return out


def _buzz(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    f = rng.uniform(110, 150)  # a low square wave: rich in harmonics
    return 0.6 * np.sign(np.sin(2 * np.pi * f * np.arange(n) / rate))


def _warble(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    centre, depth, speed = rng.uniform(900, 1200), rng.uniform(200, 300), rng.uniform(6, 9)
    t = np.arange(n) / rate
    return np.sin(_phase(centre + depth * np.sin(2 * np.pi * speed * t), rate))


SOUNDS = {
    "low beep": _beep("low"),
    "mid beep": _beep("mid"),
    "high beep": _beep("high"),
    "rising chirp": _chirp(True),
    "falling chirp": _chirp(False),
    "noise burst": _noise,
    "click train": _clicks,
    "buzz": _buzz,
    "warble": _warble,
}
SYNONYMS = {  # paraphrases of a sound's name, the first the plain one
    "low beep": ["low beep", "low-pitched beep", "low tone"],
    "mid beep": ["mid beep", "medium-pitched beep", "mid tone"],
    "high beep": ["high beep", "high-pitched beep", "high tone"],
    "rising chirp": ["rising chirp", "upward sweep", "rising sweep"],
    "falling chirp": ["falling chirp", "downward sweep", "falling sweep"],
    "noise burst": ["noise burst", "burst of noise", "hiss"],
    "click train": ["click train", "series of clicks", "rapid clicking"],
    "buzz": ["buzz", "buzzing sound", "low buzz"],
    "warble": ["warble", "warbling tone", "wavering tone"],
}
LENGTH_WORDS = {"short": ["short", "brief", "quick"], "long": ["long", "sustained", "long"]}


@dataclass(frozen=True)
class Event:
    sound: str
    length: str  # "short" | "long"


def _a(words: str) -> str:
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def describe(event: Event, rng: np.random.Generator) -> str:
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    return _a(f"{pick(LENGTH_WORDS[event.length])} {pick(SYNONYMS[event.sound])}")


def caption(events: list[Event], rng: np.random.Generator) -> str:
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    names = [describe(e, rng) for e in events]
    if len(names) == 1:
        return pick(["{0}", "just {0}", "{0} on its own", "a single sound: {0}", "one event, {0}"]).format(*names)
    if len(names) == 2:
        return pick(
            ["{0} followed by {1}", "{0} and then {1}", "first {0}, then {1}", "{1} after {0}", "{0}, after it {1}"]
        ).format(*names)
    return pick(
        [
            "{0} followed by {1} and then {2}",
            "first {0}, then {1}, then {2}",
            "{0}, then {1}, and finally {2}",
            "three sounds: {0}, {1} and {2}",
            "{0} and then {1} followed by {2}",
        ]
    ).format(*names)


def synthesize(events: list[Event], rate: int, rng: np.random.Generator) -> np.ndarray:
    parts = [np.zeros(int(rate * rng.uniform(0.02, 0.15)))]
    for index, event in enumerate(events):
        n = int(rate * rng.uniform(*DURATION_S[event.length]))
        ramp = min(n // 4, int(0.01 * rate))  # 10 ms fades: no clicks at the edges but the click trains'
        envelope = np.ones(n)
        envelope[:ramp] = np.linspace(0, 1, ramp)
        envelope[n - ramp :] = np.linspace(1, 0, ramp)
        parts.append(rng.uniform(0.4, 0.8) * envelope * SOUNDS[event.sound](n, rate, rng))
        if index < len(events) - 1:
            parts.append(np.zeros(int(rate * rng.uniform(0.08, 0.2))))
    parts.append(np.zeros(int(rate * rng.uniform(0.02, 0.15))))
    signal = np.concatenate(parts)
    signal += rng.normal(0, 0.005, len(signal))  # a faint noise floor
    return signal.astype(np.float32)


def scene(params, rng: np.random.Generator) -> list[Event]:
    count = int(rng.integers(params.min_events, params.max_events + 1))
    return [
        Event(params.sounds[int(rng.integers(len(params.sounds)))], params.lengths[int(rng.integers(len(params.lengths)))])
        for _ in range(count)
    ]


def generate_split(params, count: int, rng: np.random.Generator) -> Split:
    clips, texts, owner = [], [], []
    for i in range(count):
        events = scene(params, rng)
        clips.append(Clip(synthesize(events, params.sample_rate, rng), params.sample_rate))
        written = distinct_captions(lambda: caption(events, rng), params.captions_per_clip)
        texts += written
        owner += [i] * len(written)
    return Split(("audio", "text"), {"audio": clips, "text": texts}, np.array(owner))


def generate(params) -> RetrievalData:
    counts = {"train": params.train, "val": params.val, "test": params.test}
    splits = generated_splits(counts, params.seed, lambda count, rng: generate_split(params, count, rng))
    return RetrievalData(splits, description=f"tones (seed {params.seed})")
