"""Dataset plugins: generated ``shapes``; ``csv``, ``jsonl``, ``karpathy``, ``imagefolder``, ``webdataset`` and
Hugging Face datasets (``hf``) files; the labelled benchmarks ``wikipedia`` and ``pascal-sentences``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

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


IMAGE_TEXT = ("image", "text")  # the modalities these datasets provide, in Split order
Ratios = tuple[float, float, float]
RATIOS_HELP = "train/val/test shares for a seeded split when the data has no split of its own"


# A manifest column and the modality of its values, owners' first: an image owns its captions or its
# spoken captions (audio), a clip owns its captions.
PAIR_COLUMNS = {"image_column": "image", "audio_column": "audio", "caption_column": "text"}


class ManifestParams(xmcore.Params):
    path: xmcore.RecipePath = Field(description="the manifest file; relative to the recipe; file paths in it are relative to it (a symbolic "
                                "link in its folder may not lead out of it; absolute paths are read as written)")
    image_column: str | None = Field("filepath", description="column with the image path (open_clip's default); null: no images")
    audio_column: str | None = Field(
        None,
        description="column with an audio file path (read by the xmcore-audio plugin); paired with the caption, "
        "or with the image when image_column is given too",
    )
    caption_column: str | None = Field("title", description="column with the caption (open_clip's default); null: no captions")
    label_column: str | None = Field(None, description="optional column with a class label")
    split_column: str | None = Field(None, description="optional column with train/val/test")
    split_ratios: Ratios = Field((0.8, 0.1, 0.1), description=RATIOS_HELP)
    seed: int = Field(0, description="seed of the split when the data has none")

    @model_validator(mode="before")
    @classmethod
    def _defaults_yield_to_audio(cls, data):
        # The set columns declare the pair.  With audio_column given, a column left at its default steps
        # aside: audio pairs with image_column if that was given, else with the caption.  Writing the
        # choice as null keeps it when a run's resolved recipe (every key written out) is read again.
        if isinstance(data, dict) and data.get("audio_column"):
            data = dict(data)
            if "image_column" not in data:
                data["image_column"] = None
            elif data["image_column"] and "caption_column" not in data:
                data["caption_column"] = None
        return data

    @model_validator(mode="after")
    def _two_columns(self):
        chosen = [key for key in PAIR_COLUMNS if getattr(self, key)]
        if len(chosen) != 2:
            raise ValueError(
                f"set two of image_column, audio_column and caption_column (the pair: image and caption, audio and "
                f"caption, or image and audio); set now: {', '.join(chosen) or 'none'}"
                + ("; set one of them to null" if len(chosen) == 3 else "")
            )
        return self

    @property
    def modalities(self) -> tuple[str, str]:
        """The pair the set columns declare, owners first: (image, text), (audio, text) or (image, audio)."""
        return tuple(m for key, m in PAIR_COLUMNS.items() if getattr(self, key))


class CSVParams(ManifestParams):
    separator: str = Field("\t", description="field separator (open_clip's default: tab)")


class KarpathyParams(xmcore.Params):
    annotations: xmcore.RecipePath = Field(description="dataset_flickr30k.json / dataset_coco.json / dataset_flickr8k.json")
    image_root: xmcore.RecipePath = Field(description="folder the images' [filepath/]filename resolve against (and may not lead out of, by '..' or a symbolic link)")
    restval_to_train: bool = Field(True, description="train on the 'restval' images too (the usual COCO practice)")


class ImageFolderParams(xmcore.Params):
    root: xmcore.RecipePath = Field(description="ROOT/<class>/<image>, or ROOT/<split>/<class>/<image> with train/val/test (a symbolic link may not lead out of ROOT)")
    templates: list[str] = Field(["a photo of a {label}"], min_length=1, description="caption templates; {label} is the class")
    split_ratios: Ratios = Field((0.8, 0.1, 0.1), description=RATIOS_HELP)
    seed: int = Field(0, description="seed of the split when the folders have none")

    @field_validator("templates")
    @classmethod
    def _has_label(cls, templates: list[str]) -> list[str]:
        bad = [t for t in templates if "{label}" not in t]
        if bad:
            raise ValueError(f"every template needs {{label}}; these have none: {bad}")
        return templates


class WebDatasetParams(xmcore.Params):
    shards: xmcore.RecipePath | None = Field(None, description="brace pattern of all shards, split by split_ratios (or give train/val/test)")
    train: xmcore.RecipePath | None = Field(None, description="brace pattern of the training shards, e.g. train-{000..009}.tar")
    val: xmcore.RecipePath | None = Field(None, description="brace pattern of the validation shards")
    test: xmcore.RecipePath | None = Field(None, description="brace pattern of the test shards")
    split_ratios: Ratios = Field((0.8, 0.1, 0.1), description="train/val/test shares when only 'shards' is given")
    seed: int = Field(0, description="seed of the split when only 'shards' is given")

    @model_validator(mode="after")
    def _one_layout(self):
        if bool(self.shards) == bool(self.train):
            raise ValueError("give either 'shards' (split by split_ratios) or 'train' (with 'test', optionally 'val')")
        if self.train and not self.test:
            raise ValueError("with 'train' shards, give 'test' shards too")
        return self


class HFParams(xmcore.Params):
    path: xmcore.RecipePath = Field(
        description="a Parquet or Arrow file, a folder of them (a Hub repository as downloaded: train-*.parquet, "
        "test/...), or a folder datasets' save_to_disk wrote (a Dataset, or a DatasetDict with its splits); relative to the recipe"
    )
    image_column: str = Field("image", description="column with the image: bytes, a path (relative to its file), or a datasets Image feature")
    caption_column: str = Field("caption", description="column with the caption, or a list of captions")
    label_column: str | None = Field(None, description="optional column with a class label (a ClassLabel's names are kept)")
    id_column: str | None = Field(
        None, description="optional column naming the image: rows with the same value are one image with several "
        "captions; default: the path where images are paths, else each row is an image"
    )
    split_column: str | None = Field(None, description="optional column with each row's split (instead of the files' splits)")
    splits: dict[Literal["train", "val", "test"], str] | None = Field(
        None,
        description="which of the data's splits become train/val/test, e.g. {train: train, val: validation, test: test}; "
        "default: by name (train; validation/valid/val/dev; test/eval); the others are left out",
    )
    split_ratios: Ratios = Field((0.8, 0.1, 0.1), description=RATIOS_HELP + " (or a train split only)")
    seed: int = Field(0, description="seed of the split when the data has none")


class WikipediaParams(xmcore.Params):
    root: xmcore.RecipePath = Field(
        description="the Wikipedia dataset's folder (wikipedia_dataset/: trainset_txt_img_cat.list, "
        "testset_txt_img_cat.list, texts/<id>.xml, images/<category>/<id>.jpg)"
    )
    val_from_test: int = Field(
        231,
        ge=0,
        description="test pairs drawn (seeded) as the validation split: DSCMR's 231 of the 693, leaving 462 to test; "
        "0 keeps the original 2,173 / 693 split, without validation",
    )
    seed: int = Field(0, description="seed of the validation draw")


class PascalSentencesParams(xmcore.Params):
    root: xmcore.RecipePath = Field(
        description="folder with dataset/<category>/<image>.jpg and sentence/<category>/<image>.txt (5 sentences each)"
    )
    sentences: Literal["joined", "separate"] = Field(
        "joined",
        description="'joined': an image's sentences as one document, 1,000 image-text pairs (the protocol of DSCMR "
        "and ACMR); 'separate': each sentence a caption of its image",
    )
    split_per_class: tuple[int, int, int] = Field(
        (40, 5, 5), description="train/val/test images per category (DSCMR's 800 / 100 / 100 over 20), drawn with seed"
    )
    seed: int = Field(0, description="seed of the per-category split")


def build_wikipedia(params: WikipediaParams, ctx: xmcore.BuildContext):
    """Wikipedia (Rasiwasia et al. 2010): 2,866 image-text sections, 10 categories; relevance is by class."""
    from xmcore_datasets.benchmarks import read_wikipedia

    return read_wikipedia(params, ctx)


def build_pascal_sentences(params: PascalSentencesParams, ctx: xmcore.BuildContext):
    """Pascal Sentence (Rashtchian et al. 2010): 1,000 images, 20 categories, 5 sentences each; relevance is by class."""
    from xmcore_datasets.benchmarks import read_pascal_sentences

    return read_pascal_sentences(params, ctx)


def build_hf(params: HFParams, ctx: xmcore.BuildContext):
    """Hugging Face datasets files: Parquet/Arrow files, save_to_disk folders, Hub downloads (read with pyarrow)."""
    from xmcore_datasets.hf import read_hf

    return read_hf(params, ctx)


def build_webdataset(params: WebDatasetParams, ctx: xmcore.BuildContext):
    """Tar shards of jpg/png + txt (+ cls/json), indexed once and read by offset; brace patterns."""
    from xmcore_datasets.webdataset import read_webdataset

    return read_webdataset(params, ctx)


def build_csv(params: CSVParams, ctx: xmcore.BuildContext):
    """open_clip's CSV/TSV manifest: image (or audio) path and caption columns; rows of one image are grouped."""
    from xmcore_datasets.files import read_csv

    return read_csv(params, ctx)


def build_jsonl(params: ManifestParams, ctx: xmcore.BuildContext):
    """One JSON object per line with an image (or audio) path and a caption (the csv plugin's fields)."""
    from xmcore_datasets.files import read_jsonl

    return read_jsonl(params, ctx)


def build_karpathy(params: KarpathyParams, ctx: xmcore.BuildContext):
    """Karpathy split files of Flickr8k/Flickr30k/COCO (images[] with filename, split, sentences[].raw)."""
    from xmcore_datasets.files import read_karpathy

    return read_karpathy(params, ctx)


def build_imagefolder(params: ImageFolderParams, ctx: xmcore.BuildContext):
    """Class sub-folders; classes become captions through templates; relevance is by class."""
    from xmcore_datasets.files import read_imagefolder

    return read_imagefolder(params, ctx)


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
        modalities=IMAGE_TEXT,
        test_params={"train": 16, "val": 4, "test": 8, "image_size": 32},
    )
    # These read the user's files: the tests write fixtures in each real format (tests/test_datasets.py).
    # csv and jsonl give image and text by default; their params' `modalities` says which pair the columns set.
    register("csv", build_csv, params=CSVParams, modalities=IMAGE_TEXT, test_params=lambda: None)
    register("jsonl", build_jsonl, params=ManifestParams, modalities=IMAGE_TEXT, test_params=lambda: None)
    register("karpathy", build_karpathy, params=KarpathyParams, modalities=IMAGE_TEXT, test_params=lambda: None)
    register("imagefolder", build_imagefolder, params=ImageFolderParams, modalities=IMAGE_TEXT, test_params=lambda: None)
    register("webdataset", build_webdataset, params=WebDatasetParams, modalities=IMAGE_TEXT, test_params=lambda: None)
    register("hf", build_hf, params=HFParams, modalities=IMAGE_TEXT, test_params=lambda: None)
    register("wikipedia", build_wikipedia, params=WikipediaParams, modalities=IMAGE_TEXT, test_params=lambda: None)
    register("pascal-sentences", build_pascal_sentences, params=PascalSentencesParams, modalities=IMAGE_TEXT,
             test_params=lambda: None)
