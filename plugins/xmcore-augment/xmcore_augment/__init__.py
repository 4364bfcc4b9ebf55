"""Training-time augmentations, per modality, applied to raw items before the encoder's preprocessing.

Image augmentations wrap torchvision and timm transforms (PIL in, PIL out); text
augmentations are the EDA operations (J. Wei & K. Zou, "EDA: Easy Data
Augmentation Techniques for Boosting Performance on Text Classification Tasks",
EMNLP 2019) and synonym replacement from a user-supplied file.  Randomness comes
from the generators Lightning seeds per process and per DataLoader worker
(``random``, ``torch``), so a run is repeatable for its recipe's seed.

Mind the captions: a horizontal flip turns "a circle left of a square" into a
false caption, and colour jitter can make "red" wrong.
"""

from __future__ import annotations

from pydantic import Field

import xmcore


class Prob(xmcore.Params):
    p: float = Field(0.5, ge=0, le=1, description="probability of applying the augmentation to an item")


class ResizedCropParams(Prob):
    p: float = Field(1.0, ge=0, le=1, description="probability of applying the augmentation to an item")
    scale: tuple[float, float] = Field((0.6, 1.0), description="range of the crop's area as a fraction of the image")
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="range of the crop's aspect ratio")


class ColorJitterParams(Prob):
    brightness: float = Field(0.4, ge=0, description="brightness jitter strength")
    contrast: float = Field(0.4, ge=0, description="contrast jitter strength")
    saturation: float = Field(0.4, ge=0, description="saturation jitter strength")
    hue: float = Field(0.0, ge=0, le=0.5, description="hue jitter strength (changes colour names: keep 0 for colour captions)")


class RandAugmentParams(Prob):
    p: float = Field(1.0, ge=0, le=1, description="probability of applying the augmentation to an item")
    num_ops: int = Field(2, ge=1, description="operations applied in sequence")
    magnitude: int = Field(9, ge=0, le=30, description="operation strength, timm's m (0-30, 10 is the usual maximum)")


class ErasingParams(Prob):
    scale: tuple[float, float] = Field((0.02, 0.2), description="range of the erased area as a fraction of the image")
    ratio: tuple[float, float] = Field((0.3, 3.3), description="range of the erased rectangle's aspect ratio")


class WordOpParams(Prob):
    alpha: float = Field(0.1, gt=0, le=1, description="share of a caption's words the operation touches (at least one)")


class SynonymParams(WordOpParams):
    synonyms: xmcore.RecipePath = Field(
        description="synonyms file, relative to the recipe: one group per line, 'word syn1 syn2 ...' (or a .json mapping)"
    )


def _build_image(factory):
    def build(params, ctx: xmcore.BuildContext):
        from xmcore_augment import image

        return image.Maybe(getattr(image, factory)(params), params.p)

    return build


def _build_text(op):
    def build(params, ctx: xmcore.BuildContext):
        from xmcore_augment import text

        return text.WordOp(op, params.alpha, params.p)

    return build


def build_synonyms(params: SynonymParams, ctx: xmcore.BuildContext):
    """Replace words with a synonym from a user-supplied synonyms file."""
    from xmcore_augment import text

    table = text.read_synonyms(ctx.path(params.synonyms))
    return text.WordOp(text.SynonymReplacement(table), params.alpha, params.p)


_IMAGE = [
    ("random-resized-crop", "random_resized_crop", ResizedCropParams, "Crop a random part of the image and resize it back (torchvision)."),
    ("hflip", "hflip", Prob, "Mirror the image left to right (torchvision); beware captions that say left or right."),
    ("color-jitter", "color_jitter", ColorJitterParams, "Jitter brightness, contrast, saturation and hue (torchvision)."),
    ("randaugment", "randaugment", RandAugmentParams, "RandAugment (Cubuk et al. 2020) as timm implements it."),
    ("random-erasing", "random_erasing", ErasingParams, "Erase a random rectangle with noise (Zhong et al. 2020, torchvision)."),
]
_TEXT = [
    ("random-deletion", "delete", WordOpParams, "EDA random deletion: drop a share of the words."),
    ("random-swap", "swap", WordOpParams, "EDA random swap: swap the positions of word pairs."),
    ("random-insertion", "insert", WordOpParams, "EDA random insertion: insert copies of the caption's own words."),
]


@xmcore.hookimpl
def xmcore_register_augmentations(register):
    for name, factory, params, help in _IMAGE:
        register(name, _build_image(factory), params=params, help=help, modalities=["image"])
    for name, op, params, help in _TEXT:
        register(name, _build_text(op), params=params, help=help, modalities=["text"])
    register(
        "synonym-replacement", build_synonyms, params=SynonymParams, modalities=["text"],
        test_params=lambda: None,  # needs a synonyms file: tested in tests/test_augment.py instead
    )
