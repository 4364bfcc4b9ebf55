"""Image augmentations: thin wrappers around torchvision and timm transforms (PIL in, PIL out)."""

from __future__ import annotations

import random

import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop, v2
from torchvision.transforms.v2 import functional as F


class Maybe:
    """Apply ``transform`` with probability ``p``."""

    def __init__(self, transform, p: float):
        self.transform = transform
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.p < 1 and random.random() >= self.p:
            return image
        return self.transform(image)


class SameSizeResizedCrop:
    """RandomResizedCrop whose output keeps the input's size (the encoder's preprocessing resizes later)."""

    def __init__(self, scale, ratio):
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def __call__(self, image: Image.Image) -> Image.Image:
        top, left, h, w = RandomResizedCrop.get_params(image, self.scale, self.ratio)
        return F.resized_crop(image, top, left, h, w, size=[image.height, image.width], antialias=True)


class TensorOp:
    """Run a tensor-only transform on a PIL image."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image: Image.Image) -> Image.Image:
        tensor = F.to_image(image)
        out = self.transform(F.to_dtype(tensor, torch.float32, scale=True))
        return F.to_pil_image(out.clamp(0, 1))


def random_resized_crop(params):
    return SameSizeResizedCrop(params.scale, params.ratio)


def hflip(params):
    return F.horizontal_flip


def color_jitter(params):
    return v2.ColorJitter(params.brightness, params.contrast, params.saturation, params.hue)


def randaugment(params):
    from timm.data.auto_augment import rand_augment_transform

    return rand_augment_transform(f"rand-m{params.magnitude}-n{params.num_ops}", {"img_mean": (124, 116, 104)})


def random_erasing(params):
    return TensorOp(v2.RandomErasing(p=1.0, scale=tuple(params.scale), ratio=tuple(params.ratio), value="random"))
