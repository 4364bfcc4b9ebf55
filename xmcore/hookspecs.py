"""The extension points of xmcore: every hook a plugin may implement.

All hooks are *contribution* hooks in the style of simonw/llm and tox: the core
calls each one once per run, right after the plugins are loaded and before any
recipe is validated, passing a ``register`` callback.  A plugin calls
``register`` once per component it contributes::

    import xmcore

    @xmcore.hookimpl
    def xmcore_register_fusions(register):
        register("my-fusion", build_my_fusion, params=MyFusionParams)

``register(name, build, *, params=None, help=None, modalities=None, test_params=None, test_items=None)``

* ``name`` -- what a recipe writes as ``name:``; unique within its kind.
  Registering a name twice is an error that names both plugins.
* ``build(params, ctx)`` -- creates the component.  It is called only after the
  whole recipe validated, so it may import torch and load weights; the hook
  itself should stay cheap (``xmcore validate`` and ``xmcore plugins`` run it).
  ``params`` is an instance of the ``params`` class, ``ctx`` an
  :class:`xmcore.BuildContext`.
* ``params`` -- a subclass of :class:`xmcore.Params` (a pydantic model) that
  declares each parameter's type, default and one-line description.  Recipes are
  validated against it; ``xmcore plugins`` prints it.
* ``help`` -- one line for ``xmcore plugins``; defaults to the first line of
  ``build``'s docstring.
* ``modalities`` -- for encoders, augmentations and explainers: the modality names the
  component accepts (``("image",)``, ``("text",)``), ``None`` meaning any; for
  datasets: the modalities every split provides, in order (``("image", "text")``),
  so that a recipe's encoders are checked against them before any data is read.
* ``test_params`` -- small parameters for the contract tests in
  :mod:`xmcore.testing` (a dict, or a callable returning a dict, or ``None``
  when the component cannot be built offline on this machine).
* ``test_items`` -- for encoders and augmentations of a modality the core has
  no sample items for (it has images and texts): ``test_items(n)`` returns
  ``n`` raw items of that modality for the contract checks.

No hook here is ``firstresult``: every implementation is called and the results
are the registrations themselves.  Hooks are listed in the order the core calls
them during ``xmcore run``.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("xmcore")

Register = Callable[..., None]


@hookspec
def xmcore_register_datasets(register: Register) -> None:
    """Register dataset components (recipe section ``data``).

    ``build(params, ctx)`` returns an :class:`xmcore.data.RetrievalData`: named
    splits (``train``, ``val``, ``test``), each an :class:`xmcore.data.Split` of
    items of two modalities where every item of the second modality (e.g. a
    caption) belongs to one item of the first (its image).  ``ctx.seed`` is the
    recipe's seed and ``ctx.base_dir`` the recipe file's folder, against which
    relative paths resolve: declare path parameters as :data:`xmcore.RecipePath` and read
    them with ``ctx.path(...)``, so that a path typed on the command line resolves against
    the working directory instead (see :class:`xmcore.registry.PathParam`).
    ``modalities=`` names the splits' modalities, owners first, so a recipe's encoders are checked
    before anything loads; a dataset whose pair depends on its parameters (which manifest columns
    are set) gives its params class a ``modalities`` property, which takes precedence.
    """


@hookspec
def xmcore_register_augmentations(register: Register) -> None:
    """Register augmentation components (recipe section ``augment.<modality>``).

    ``build(params, ctx)`` returns a callable applied to one raw training item of
    ``ctx.modality`` (a ``PIL.Image`` for images, a ``str`` for text) that
    returns an item of the same kind.  Augmentations run on training items only,
    in the order the recipe lists them, before the encoder's preprocessing.
    """


@hookspec
def xmcore_register_encoders(register: Register) -> None:
    """Register encoder components (recipe section ``encoders.<modality>``).

    ``build(params, ctx)`` returns an :class:`xmcore.components.Encoder` for
    ``ctx.modality``: a ``torch.nn.Module`` with an ``output_dim`` attribute, a
    picklable ``preprocessor`` (raw item -> tensor, list -> batch) and
    ``forward(batch) -> Tensor[batch, output_dim]``.  ``ctx.train_items()``
    returns the raw training items of that modality, for encoders that fit
    something to the data (a vocabulary, say).  The core freezes the encoder
    when the recipe says ``freeze: true``.
    """


@hookspec
def xmcore_register_fusions(register: Register) -> None:
    """Register fusion strategies: how modalities reach the common space (section ``fusion``).

    ``build(params, ctx)`` returns an :class:`xmcore.components.Fusion`: a
    module whose ``forward(features, modality)`` maps one modality's encoder
    features (``ctx.input_dims[modality]`` wide) to the common space
    (``ctx.dim`` wide), and whose ``auxiliary_loss(embeddings, progress)`` may
    add a training objective of its own (the adversarial strategy's
    discriminator); ``progress`` runs from 0 to 1 over training.
    """


@hookspec
def xmcore_register_losses(register: Register) -> None:
    """Register retrieval losses (recipe section ``loss``).

    ``build(params, ctx)`` returns a ``torch.nn.Module`` called as
    ``loss(a, b, groups)``: ``a`` and ``b`` are L2-normalised embeddings of the
    two modalities for the same batch of pairs (row ``i`` of ``a`` matches row
    ``i`` of ``b``), and ``groups[i]`` identifies the group of pair ``i`` (by
    default its first-modality item, or its class where relevance is by class;
    the recipe key ``loss.groups`` chooses), so that two captions of one image
    in a batch are not treated as negatives of each other.  Returns a scalar
    tensor.  The same losses serve as ``loss.extra`` objectives, each added with
    its ``weight``.  ``ctx.dim`` is the common space's width and
    ``ctx.num_classes`` the number of classes when the groups are class ids
    (``None`` otherwise), for losses with parameters of their own (a label
    classifier).
    """


@hookspec
def xmcore_register_metrics(register: Register) -> None:
    """Register retrieval metrics (recipe section ``eval.metrics``).

    ``build(params, ctx)`` returns a callable that takes a mapping from direction
    (``"i2t"``, ``"t2i"``) to :class:`xmcore.evaluation.Ranking` and returns a
    flat ``{metric_id: float}``; ids are ``"<direction>/<metric>"`` (``i2t/R@1``)
    or a bare name for a metric over both directions (``rsum``).
    """


@hookspec
def xmcore_register_explainers(register: Register) -> None:
    """Register explanation methods (``xmcore explain --method NAME``).

    ``build(params, ctx)`` returns a callable ``explain(model, modality, item, target)`` ->
    :class:`xmcore.explain.Explanation`: how much each part of one raw ``item`` of ``modality`` (the
    pixels of a picture, the words of a text) makes its embedding point towards ``target``, the fixed
    L2-normalised common-space embedding (``Tensor[1, dim]``) of an item of another modality; the score
    explained is their cosine.  ``model`` is an :class:`xmcore.explain.ExplainModel`: the trained
    encoders and fusion, always run on the raw item (never on cached features).  An image's map covers
    the picture's own pixels; a text's attributions are per word (sum over a word's tokens); a map over
    an item of any other modality is 2-D over what :class:`xmcore.explain.Canvas` shows (e.g. the
    log-spectrogram the encoder read), which the explanation carries so that the core can draw it.
    ``modalities=`` names the modalities a method explains; a method that needs something of the
    encoder (a convolutional layer, its word-embedding layer) raises :class:`xmcore.errors.XmcoreError`
    saying what is missing.  Not called during ``xmcore run``.
    """
