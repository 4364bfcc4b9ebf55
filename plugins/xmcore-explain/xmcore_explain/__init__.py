"""Explainers built on captum (Kokhlikyan et al., "Captum: A unified and generic model interpretability
library for PyTorch", 2020): which pixels and which words make a picture and a text match.

Every method explains the same number, the cosine of the pair's common-space embeddings, with the other
side's embedding held fixed:

* ``gradcam`` -- Grad-CAM (Selvaraju et al., ICCV 2017) by captum's ``LayerGradCam`` on a convolutional
  stage of the image encoder, ReLU on, upsampled onto the picture;
* ``occlusion`` -- captum's ``Occlusion`` (Zeiler & Fergus, ECCV 2014): hide a sliding patch (painted in
  the picture's mean colour) and measure the score's drop; needs nothing of the encoder (ViTs included);
  for sounds the patch slides over the encoder's log-mel input (time x frequency, hidden by the
  spectrogram's mean level: :mod:`xmcore_explain.spectrogram`);
* ``integrated-gradients`` -- Sundararajan et al., ICML 2017: for pictures captum's
  ``IntegratedGradients`` on the input pixels (from the normalisation's mean colour: grey), for texts
  ``LayerIntegratedGradients`` on the encoder's word-embedding layer (from padding tokens), summed
  over each word's tokens.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

import xmcore


class GradCamParams(xmcore.Params):
    layer: str | None = Field(
        None,
        description="the image encoder's layer to take Grad-CAM at, as a dotted module path inside the encoder "
        "(e.g. model.layer3); default: the deepest stage of a timm CNN whose map keeps at least 7 x 7 positions",
    )


class OcclusionParams(xmcore.Params):
    # 3/16 of the side: about the size of the smallest shape in the shapes data (chosen on pictures of another
    # seed than bench/explain.py measures on); give about the size of what the text names in your pictures.
    window: float = Field(0.1875, gt=0, le=1, description="the patch's side, as a fraction of the model input's shorter side "
                          "(about the size of the things looked for)")
    stride: float = Field(0.25, gt=0, le=1, description="the step between patches, as a fraction of the patch's side")
    batch: int = Field(64, ge=1, description="occluded pictures per forward pass")
    fill: Literal["mean", "zero"] = Field(
        "mean", description="what hides a patch: the picture's mean colour (a spectrogram's mean level), or 0 in the "
        "model's input (the normalisation's mean)")


class IntegratedGradientsParams(xmcore.Params):
    steps: int = Field(32, ge=2, le=1024, description="integration steps from the baseline to the input")
    batch: int = Field(32, ge=1, description="steps per forward pass")


def build_gradcam(params: GradCamParams, ctx: xmcore.BuildContext):
    """Grad-CAM (captum LayerGradCam) on a convolutional stage, chosen for timm CNNs; pictures."""
    from xmcore_explain.image import GradCam

    return GradCam(params.layer)


def build_occlusion(params: OcclusionParams, ctx: xmcore.BuildContext):
    """Occlusion (captum): the score's drop when a sliding patch hides each place of a picture (any image encoder) or of
    a sound's log-mel input (time x frequency)."""
    from xmcore_explain.image import Occlusion

    return Occlusion(params.window, params.stride, params.batch, params.fill)


def build_integrated_gradients(params: IntegratedGradientsParams, ctx: xmcore.BuildContext):
    """Integrated gradients (captum): pixels from a grey picture; words at the word-embedding layer, from padding."""
    from xmcore_explain.image import IntegratedGradients

    return IntegratedGradients(params.steps, params.batch)


@xmcore.hookimpl
def xmcore_register_explainers(register):
    register("gradcam", build_gradcam, params=GradCamParams, modalities=["image"])
    register("occlusion", build_occlusion, params=OcclusionParams, modalities=["image", "audio"], test_params={"window": 0.25})
    register("integrated-gradients", build_integrated_gradients, params=IntegratedGradientsParams,
             modalities=["image", "text"], test_params={"steps": 8})
