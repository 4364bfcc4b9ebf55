"""The image and the text tower of an open_clip model as two xmcore encoders.

CLIP: A. Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021; open_clip: G. Ilharco et al. (2021), M. Cherti et al., "Reproducible scaling laws for
contrastive language-image learning", CVPR 2023.  Each encoder builds the whole model with open_clip's
own factory, loads the local weights file into it (open_clip's loader: it converts the formats it
knows and resizes position embeddings), then keeps one tower: the image encoder the visual tower, the
text encoder everything but it.  Each tower outputs its projection into CLIP's joint space
(``embed_dim`` wide), so two frozen towers of one checkpoint already retrieve zero-shot; the recipe's
fusion maps them on from there.  Preprocessing is open_clip's: its image transform (with the
pretrained tag's mean, std and resize mode) and its tokenizer.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

from xmcore.components import Encoder, Preprocessor
from xmcore.errors import XmcoreError
from xmcore_openclip import PREPROCESS_KEYS

TEST_CONFIGS = Path(__file__).parent / "model_configs"  # xmcore-test-* architectures, as timm's test_* models


class ImagePreprocessor(Preprocessor):
    """open_clip's evaluation transform (RGB, resize, centre crop, normalise) of one picture."""

    def __init__(self, transform, config: dict[str, Any]):
        self.transform = transform
        self.config = config

    def __call__(self, image) -> torch.Tensor:
        return self.transform(image)

    def __repr__(self) -> str:
        return f"OpenClipImagePreprocessor({sorted(self.config.items())}, {self.transform!r})"


class TextPreprocessor(Preprocessor):
    """Token ids from open_clip's tokenizer, ``context_length`` per caption (padded, cut with an end token)."""

    def __init__(self, tokenizer, context_length: int, name: str):
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.name = name

    def __call__(self, text: str) -> torch.Tensor:
        return self.tokenizer([text], context_length=self.context_length)[0]

    def __repr__(self) -> str:
        vocab = getattr(self.tokenizer, "vocab_size", None) or len(getattr(self.tokenizer, "tokenizer", ()))
        return f"OpenClipTextPreprocessor({type(self.tokenizer).__name__} of {self.name}, vocab={vocab}, context_length={self.context_length})"


class ImageTower(Encoder):
    def __init__(self, visual: torch.nn.Module, output_dim: int, preprocessor: ImagePreprocessor):
        super().__init__()
        self.visual = visual
        self.output_dim = output_dim
        self.preprocessor = preprocessor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def export(self, folder):
        """The state dict holds every weight; the preprocessing is written out, as the tag gave it."""
        return {"checkpoint": None, "pretrained": None, "preprocess": _plain(self.preprocessor.config)}


class TextTower(Encoder):
    def __init__(self, model: torch.nn.Module, output_dim: int, preprocessor: TextPreprocessor):
        super().__init__()
        self.model = model  # the open_clip model without its visual tower and logit scale
        self.output_dim = output_dim
        self.preprocessor = preprocessor

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)

    def export(self, folder):
        """The state dict holds every weight: a rebuild reads no checkpoint file."""
        return {"checkpoint": None, "pretrained": None}

    def query_warnings(self, text: str) -> list[str]:
        encode = getattr(self.preprocessor.tokenizer, "encode", None)
        if encode is None:
            return []
        tokens = len(encode(text)) + 2  # the start and end tokens
        limit = self.preprocessor.context_length
        if tokens > limit:
            return [f"the text model reads only the first {limit - 2} of this query's {tokens - 2} tokens; the rest was ignored"]
        return []


def build_tower(params, modality: str, checkpoint: str | None) -> Encoder:
    """The ``modality`` tower of ``params.model_name``, weights from ``checkpoint`` (or random)."""
    with _root_logging_untouched():
        return _build_tower(params, modality, checkpoint)


def _build_tower(params, modality: str, checkpoint: str | None) -> Encoder:
    key = f"encoders.{modality}"
    config = model_config(params.model_name, key)
    tag = pretrained_config(params, checkpoint, config, key)
    context = params.context_length or int(config["text_cfg"].get("context_length", 77))
    text_preprocessor = None
    if modality != "image":  # before the model: a tokenizer that cannot be had offline fails fast
        text_preprocessor = TextPreprocessor(tokenizer(params.model_name, config, context, key), context, params.model_name)
    model = _create(params, key)
    if checkpoint is not None:
        _load(model, checkpoint, params.model_name, key)
    output_dim = int(config["embed_dim"])
    if modality == "image":
        preprocess = merge_preprocess_dict(open_clip.get_model_preprocess_cfg(model), {
            **{k: v for k, v in tag.items() if k != "size"}, **params.preprocess})
        # one spelling (tuples) for one preprocessing: its description is part of the feature cache's key
        preprocess = {k: tuple(v) if isinstance(v, list) else v for k, v in preprocess.items()}
        try:
            transform = image_transform_v2(PreprocessCfg(**preprocess), is_train=False)
        except (AssertionError, TypeError, ValueError) as exc:
            raise XmcoreError(f"{key}.preprocess: open_clip refused {params.preprocess} ({type(exc).__name__}: {exc})") from None
        return ImageTower(model.visual, output_dim, ImagePreprocessor(transform, preprocess))
    model.visual = None
    for name in ("logit_scale", "logit_bias"):  # CLIP's contrastive temperature: the recipe's loss has its own
        if getattr(model, name, None) is not None:
            delattr(model, name)
    return TextTower(model, output_dim, text_preprocessor)


def model_config(name: str, key: str) -> dict[str, Any]:
    """open_clip's configuration of architecture ``name``; names that load from elsewhere are refused."""
    if name.startswith(("hf-hub:", "local-dir:")):
        raise XmcoreError(
            f"{key}.model_name: '{name}' makes open_clip read its configuration and weights from "
            f"{'the Hugging Face Hub' if name.startswith('hf-hub:') else 'a folder'}; xmcore never downloads weights: "
            "give the architecture's name (open_clip_config.json's model_cfg names it, e.g. ViT-B-32) and the "
            f"downloaded weights file as {key}.checkpoint"
        )
    if "xmcore-test-vit" not in open_clip.list_models():
        open_clip.add_model_config(TEST_CONFIGS)
    config = open_clip.get_model_config(name)
    if config is None:
        import difflib

        close = difflib.get_close_matches(name, open_clip.list_models(), n=3, cutoff=0.6)
        raise XmcoreError(
            f"{key}.model_name: open_clip has no architecture '{name}'"
            + (f"; did you mean {', '.join(close)}?" if close else "")
            + " (open_clip.list_models() lists them)"
        )
    return config


def pretrained_config(params, checkpoint: str | None, config: dict[str, Any], key: str) -> dict[str, Any]:
    """The pretrained tag's configuration (its preprocessing), checked against the architecture and the
    checkpoint: a tag alone would make open_clip download the weights."""
    if params.pretrained is None:
        return {}
    tag = open_clip.get_pretrained_cfg(params.model_name, params.pretrained)
    if not tag:
        tags = open_clip.list_pretrained_tags_by_model(params.model_name)
        raise XmcoreError(
            f"{key}.pretrained: open_clip has no pretrained tag '{params.pretrained}' for {params.model_name}; "
            + (f"its tags: {', '.join(tags)}" if tags else "it has none (null: random weights or a checkpoint's)")
        )
    if bool(tag.get("quick_gelu", False)) != bool(config.get("quick_gelu", False)):
        fix = f"{params.model_name}-quickgelu" if tag.get("quick_gelu") else params.model_name.removesuffix("-quickgelu")
        raise XmcoreError(
            f"{key}.pretrained: the '{params.pretrained}' weights were trained with"
            f"{'' if tag.get('quick_gelu') else 'out'} QuickGELU activations, the architecture {params.model_name} "
            f"is built with{'out' if tag.get('quick_gelu') else ''} them: use {key}.model_name={fix}"
        )
    if checkpoint is None:
        raise XmcoreError(
            f"{key}.pretrained: open_clip would download the '{params.pretrained}' weights of {params.model_name}; "
            f"xmcore never downloads weights: download the file from {weights_source(tag)} beforehand and give it "
            f"as {key}.checkpoint (or set {key}.pretrained=null for random weights)"
        )
    if not Path(checkpoint).is_file():
        raise XmcoreError(
            f"{key}.checkpoint: no such file {checkpoint}; the '{params.pretrained}' weights of {params.model_name} "
            f"come from {weights_source(tag)}: download the file beforehand"
        )
    return tag


def weights_source(tag: dict[str, Any]) -> str:
    """Where a pretrained tag's weights file can be downloaded from, in words."""
    repository = tag.get("hf_hub", "").rstrip("/")
    if repository:
        return f"the Hugging Face repository {repository} (open_clip_pytorch_model.bin or open_clip_model.safetensors)"
    return tag.get("url") or "open_clip's release page"


def _create(params, key: str) -> torch.nn.Module:
    try:
        return open_clip.create_model(
            params.model_name,
            pretrained=None,  # weights come from the local file only
            pretrained_image=False,
            pretrained_text=False,
            force_image_size=params.image_size,
            force_context_length=params.context_length,
        )
    except OSError as exc:  # a Hugging Face text tower's configuration is fetched from the hub
        raise XmcoreError(
            f"{key}.model_name: open_clip cannot build {params.model_name} offline ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); its text tower's Hugging Face configuration must "
            "be in the local cache"
        ) from None


def _load(model: torch.nn.Module, checkpoint: str, name: str, key: str) -> None:
    if not Path(checkpoint).is_file():
        raise XmcoreError(f"{key}.checkpoint: no such file {checkpoint}")
    try:
        result = open_clip.load_checkpoint(model, checkpoint, strict=False, weights_only=True)
    except RuntimeError as exc:  # tensors of other shapes: another architecture, image size or context length
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc).splitlines()[0])
        raise XmcoreError(
            f"{key}.checkpoint: {checkpoint} does not fit open_clip's {name}: {detail[:300]}; is it a whole open_clip "
            "model of that architecture, with the image_size and context_length it was trained with?"
        ) from None
    except Exception as exc:  # noqa: BLE001 -- unpickling, safetensors and zip errors have many types
        first = str(exc).split(". ")[0].splitlines()[0] if str(exc) else ""
        raise XmcoreError(
            f"{key}.checkpoint: cannot read {checkpoint} as a weights file ({type(exc).__name__}: {first[:200]}); "
            "expected a state dict (.bin/.pt/.pth, read with weights_only=True) or .safetensors"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise XmcoreError(
            f"{key}.checkpoint: {checkpoint} does not match open_clip's {name}: missing {len(result.missing_keys)} "
            f"tensors (e.g. {result.missing_keys[:3]}), unexpected {len(result.unexpected_keys)} "
            f"(e.g. {result.unexpected_keys[:3]}); is it a whole open_clip model of that architecture?"
        )


def tokenizer(name: str, config: dict[str, Any], context_length: int, key: str):
    """open_clip's tokenizer for ``name``, built offline: CLIP's BPE vocabulary ships inside open_clip;
    a Hugging Face tokenizer is read from the local cache only."""
    text = config.get("text_cfg", {})
    if text.get("hf_tokenizer_name"):
        try:
            return open_clip.get_tokenizer(name, context_length=context_length, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise XmcoreError(
                f"{key}.model_name: {name} reads text with the Hugging Face tokenizer "
                f"'{text['hf_tokenizer_name']}', which is not in the local cache ({type(exc).__name__}); "
                "xmcore never downloads it: fetch it beforehand (with network: "
                f"python -c \"import transformers; transformers.AutoTokenizer.from_pretrained('{text['hf_tokenizer_name']}')\")"
            ) from None
    if "siglip" in name.lower():
        raise XmcoreError(
            f"{key}.model_name: {name}'s SigLIP tokenizer is a sentencepiece vocabulary that open_clip downloads "
            "from the web each time; it cannot be used offline: choose a CLIP architecture for the text tower"
        )
    return open_clip.get_tokenizer(name, context_length=context_length)


@contextmanager
def _root_logging_untouched():
    """open_clip logs with ``logging.info``/``logging.warning``, which configure the root logger on first
    use (a stderr handler printing 'WARNING:root:...' for the rest of the process, Lightning's messages
    included); a NullHandler meanwhile keeps the root logger as the application set it."""
    root = logging.getLogger()
    added = logging.NullHandler() if not root.handlers else None
    if added:
        root.addHandler(added)
    try:
        yield
    finally:
        if added:
            root.removeHandler(added)


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """Preprocessing settings as recipe values (tuples as lists), without the size the tower fixes."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if k in PREPROCESS_KEYS}
