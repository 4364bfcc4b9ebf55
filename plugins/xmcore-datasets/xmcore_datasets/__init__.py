"""Dataset plugins."""

from __future__ import annotations

from pydantic import Field, model_validator

import xmcore


class ShapesParams(xmcore.Params):
    train: int = Field(2000, gt=0, description="training images")
    val: int = Field(200, ge=0, description="validation images (0: no validation split)")
    test: int = Field(200, gt=0, description="test images")
    image_size: int = Field(64, ge=16, description="image width and height in pixels")
    grid: int = Field(3, ge=2, le=5, description="shapes sit in the cells of a grid x grid layout")
    min_shapes: int = Field(1, ge=1, description="fewest shapes per image")
    max_shapes: int = Field(3, ge=1, description="most shapes per image")
    captions_per_image: int = Field(5, ge=1, description="captions written for each image")
    colors: list[str] = Field(
        ["red", "green", "blue", "yellow", "purple", "orange"], description="colour vocabulary (known colour names)"
    )
    shapes: list[str] = Field(["circle", "square", "triangle", "cross"], description="shape vocabulary")
    seed: int = Field(0, description="generation seed (independent of the training seed, so data stay fixed)")

    @model_validator(mode="after")
    def _check(self):
        from xmcore_datasets.shapes import COLOR_RGB, DRAWERS

        if self.max_shapes < self.min_shapes:
            raise ValueError(f"max_shapes ({self.max_shapes}) is below min_shapes ({self.min_shapes})")
        if self.max_shapes > self.grid * self.grid:
            raise ValueError(f"max_shapes ({self.max_shapes}) exceeds the {self.grid}x{self.grid} grid's cells")
        bad = [c for c in self.colors if c not in COLOR_RGB]
        if bad:
            raise ValueError(f"unknown colours {bad}; known: {', '.join(COLOR_RGB)}")
        bad = [s for s in self.shapes if s not in DRAWERS]
        if bad:
            raise ValueError(f"unknown shapes {bad}; known: {', '.join(DRAWERS)}")
        return self


def build_shapes(params: ShapesParams, ctx: xmcore.BuildContext):
    """Generated images of coloured shapes with paraphrased captions; deterministic, no download."""
    from xmcore_datasets.shapes import generate

    return generate(params)


@xmcore.hookimpl
def xmcore_register_datasets(register):
    register(
        "shapes",
        build_shapes,
        params=ShapesParams,
        test_params={"train": 16, "val": 4, "test": 8, "image_size": 32},
    )
