"""``shapes``: procedurally generated images of coloured shapes, with captions from a small grammar.

Each image holds 1-3 shapes in distinct cells of a grid.  Its captions name the
shapes' colours and kinds and either where a lone shape sits ("a red circle in
the top left corner") or how two shapes relate ("a red circle left of a blue
square" / "a blue square to the right of a red circle"), in several paraphrases.
Generation is deterministic for the ``seed`` parameter, needs no download, and
takes about a second for a few thousand images.

Where every shape is drawn is known, and kept out of the training items: ``extras["objects"][split][i]``
lists image ``i``'s shapes, each ``{"box": [x0, y0, x1, y1], "color": ..., "shape": ..., "phrase": "a red
circle"}`` with the box in the picture's pixels -- ground truth for measuring explanations
(``bench/explain.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from xmcore.data import RetrievalData, Split, distinct_captions, generated_splits

COLOR_RGB = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
    "pink": (240, 120, 190),
    "brown": (130, 80, 30),
}


def _circle(draw: ImageDraw.ImageDraw, box, fill) -> None:
    draw.ellipse(box, fill=fill)


def _square(draw, box, fill) -> None:
    draw.rectangle(box, fill=fill)


def _triangle(draw, box, fill) -> None:
    x0, y0, x1, y1 = box
    draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _cross(draw, box, fill) -> None:
    x0, y0, x1, y1 = box
    w, h = (x1 - x0) / 3, (y1 - y0) / 3
    draw.rectangle((x0 + w, y0, x1 - w, y1), fill=fill)
    draw.rectangle((x0, y0 + h, x1, y1 - h), fill=fill)


def _diamond(draw, box, fill) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)


DRAWERS = {"circle": _circle, "square": _square, "triangle": _triangle, "cross": _cross, "diamond": _diamond}


@dataclass(frozen=True)
class Placed:
    color: str
    shape: str
    row: int
    col: int

    @property
    def noun(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def a(self) -> str:
        """The noun with its indefinite article: 'a red circle', 'an orange square'."""
        return f"{'an' if self.color[0] in 'aeiou' else 'a'} {self.noun}"


def _vertical(frac: float) -> str:
    return "top" if frac < 1 / 3 else "bottom" if frac > 2 / 3 else "middle"


def _horizontal(frac: float) -> str:
    return "left" if frac < 1 / 3 else "right" if frac > 2 / 3 else "center"


def location_phrases(p: Placed, grid: int) -> list[str]:
    v = _vertical((p.row + 0.5) / grid)
    h = _horizontal((p.col + 0.5) / grid)
    if v == "middle" and h == "center":
        return ["in the center", "in the middle", "at the center of the picture"]
    if v == "middle":
        return [f"on the {h}", f"at the {h} side", f"on the {h} side of the picture"]
    if h == "center":
        return [f"at the {v}", f"at the {v} of the picture", f"near the {v} edge"]
    return [f"in the {v} {h} corner", f"at the {v} {h}", f"in the {v} {h}"]


def relations(a: Placed, b: Placed) -> list[tuple[str, str]]:
    """(phrase for 'a REL b', phrase for 'b REL a') for each relation that holds."""
    out = []
    if a.col < b.col:
        out += [("left of", "right of"), ("to the left of", "to the right of")]
    elif a.col > b.col:
        out += [("right of", "left of"), ("to the right of", "to the left of")]
    if a.row < b.row:
        out += [("above", "below")]
    elif a.row > b.row:
        out += [("below", "above")]
    return out


def caption(shapes: list[Placed], grid: int, rng: np.random.Generator) -> str:
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    if len(shapes) == 1:
        (s,) = shapes
        loc = pick(location_phrases(s, grid))
        template = pick(["{a} {loc}", "there is {a} {loc}", "{loc} there is {a}", "one {n} {loc}", "{loc}: {a}"])
        return template.format(a=s.a, n=s.noun, loc=loc)
    order = [shapes[i] for i in rng.permutation(len(shapes))]
    a, b, rest = order[0], order[1], order[2:]
    forward, backward = pick(relations(a, b))
    template = pick(
        [
            "{a} {f} {b}",
            "{b} {r} {a}",
            "there is {a} {f} {b}",
            "the {an} is {f} the {bn}",
            "{b} with {a} {f} it",
        ]
    )
    text = template.format(a=a.a, b=b.a, an=a.noun, bn=b.noun, f=forward, r=backward)
    if rest:
        others = " and ".join(o.a for o in rest)
        text = pick([f"{text}, and {others}", f"{text}, plus {others}", f"{others}, and {text}"])
    return text


def render(shapes: list[Placed], size: int, grid: int, rng: np.random.Generator) -> Image.Image:
    return draw_scene(shapes, size, grid, rng)[0]


def draw_scene(shapes: list[Placed], size: int, grid: int, rng: np.random.Generator) -> tuple[Image.Image, list]:
    """The picture and each shape's box ``(x0, y0, x1, y1)`` in its pixels, in the order of ``shapes``."""
    background = rng.integers(215, 245)
    pixels = np.clip(background + rng.normal(0, 4, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    cell = size / grid
    boxes = []
    for s in shapes:
        extent = cell * rng.uniform(0.55, 0.85)
        slack = cell - extent
        x0 = s.col * cell + rng.uniform(0, slack)
        y0 = s.row * cell + rng.uniform(0, slack)
        box = (x0, y0, x0 + extent, y0 + extent)
        DRAWERS[s.shape](draw, box, COLOR_RGB[s.color])
        boxes.append(box)
    return image, boxes


def scene(params, rng: np.random.Generator) -> list[Placed]:
    count = int(rng.integers(params.min_shapes, params.max_shapes + 1))
    cells = rng.choice(params.grid * params.grid, size=count, replace=False)
    return [
        Placed(
            color=params.colors[int(rng.integers(len(params.colors)))],
            shape=params.shapes[int(rng.integers(len(params.shapes)))],
            row=int(c) // params.grid,
            col=int(c) % params.grid,
        )
        for c in cells
    ]


def generate_split(params, count: int, rng: np.random.Generator) -> Split:
    return generate_scenes(params, count, rng)[0]


def generate_scenes(params, count: int, rng: np.random.Generator) -> tuple[Split, list[list[dict]]]:
    """A split of ``count`` pictures with their captions, and each picture's shapes (see the module's docstring)."""
    images, texts, owner, objects = [], [], [], []
    for i in range(count):
        shapes = scene(params, rng)
        image, boxes = draw_scene(shapes, params.image_size, params.grid, rng)
        images.append(image)
        objects.append([
            {"box": [round(float(v), 2) for v in box], "color": s.color, "shape": s.shape, "phrase": s.a}
            for s, box in zip(shapes, boxes)
        ])
        written = distinct_captions(lambda: caption(shapes, params.grid, rng), params.captions_per_image)
        texts += written
        owner += [i] * len(written)
    return Split(("image", "text"), {"image": images, "text": texts}, np.array(owner)), objects


def generate(params) -> RetrievalData:
    counts = {"train": params.train, "val": params.val, "test": params.test}
    objects: list[list[list[dict]]] = []

    def make_split(count: int, rng: np.random.Generator) -> Split:
        split, shapes = generate_scenes(params, count, rng)
        objects.append(shapes)
        return split

    splits = generated_splits(counts, params.seed, make_split)  # made in order, the splits without items skipped
    return RetrievalData(splits, description=f"shapes (seed {params.seed})", extras={"objects": dict(zip(splits, objects))})
