"""Train the embedded shapes Mobile-O on a CPU, in the paper's stages (``mobile-o train-demo``).

The model is the ``shapes`` preset: the real module types (Qwen2, FastViT-MCi, MLP projector, MCP, SANA DiT,
DC-AE), narrow and shallow, at reduced resolutions (256 px in → 64 image tokens; 32×16×16 latents → 128 px
out). Stages (the paper's, scaled down to minutes):

(a) **autoencoder**: DC-AE reconstruction of whole 128 px renders, object pixels weighted up;
    ``scaling_factor`` = 1 / std of the latents (as SANA's 0.41407).
(b1) **vision tower** (training form: unfolded MobileOne/RepMixer branches, folded on save) on dense
    per-token labels through a throw-away head (stands in for MobileCLIP pre-training).
(b2) **VLM**: projector and LLM on questions about images (the inference template ``prompts.vqa_prompt``,
    images through the reference preprocessing, spliced at the −200 placeholder) and, text only, on the
    same questions about captions inside the generation prompt; a short-format warm-up first.
(c0) **conditioning**: LLM, projector and MCP on a training-only read-out of the MCP output
    (:class:`ConditioningProbe`: per named position, what the target scene shows there), for captions and
    for edit prompts with their source images, with the VQA loss beside it; no DiT yet.
(c) **DiT + MCP** with the VLM frozen: rectified flow on captions (and ``dit_edits`` edit prompts per
    step), ``x_t = (1−σ)x0 + σε``, target
    ``ε − x0``, σ drawn with the inference schedule's shift; the prompt is ``prompts.generation_prompt``,
    the MCP sees hidden_states[-4:] at each prompt's true length (it is not padding-invariant), the DiT a
    padded batch with ``encoder_attention_mask``. The unconditional branch (all-zero hidden states through
    the MCP, as CFG uses at inference) is trained with probability ``uncond_prob``. The probe's loss stays
    beside the flow loss here and in (d), at ``probe_weight``; the flow loss weighs latent pixels on and
    next to objects up (``dit_object_weight``). On edit rows, the copy loss (:func:`copy_attention_loss`,
    training only) asks head 0 of one cross-attention layer to attend from each latent cell to the source
    image token it should copy (:func:`copy_map`): without it the DiT's cross-attention from a cell to the
    image token of the same cell stays at chance (1–4%, every head and layer) and the edits redraw the
    source's objects in the wrong colours and shapes.
(d) **joint post-training**: generation (caption → scene), editing (edit prompt with the source image's
    tokens → the edited scene's latents) and VQA (``ce_weight`` × CE) together; the LLM, projector, MCP
    and DiT train, the vision tower stays frozen (its features are cached; the paper trains it at a low LR).

Stage (a) runs in a worker process beside (b1) and (b2); stages (c0), (c) and (d) are data-parallel over
``data_parallel`` processes (:mod:`mobile_o_ros.shapes.parallel`). Everything is seeded (for a given
number of processes); :func:`train_demo` writes a checkpoint folder that
:func:`mobile_o_ros.reference.checkpoint.load_checkpoint` loads strictly.

Modules, each importing only those above it:

- :mod:`.recipe`: :class:`Recipe`, what every stage's options do;
- :mod:`.data`: model inputs, dense labels, the cached training sets and the conditioning batches;
- :mod:`.losses`: flow, VQA and caption-QA, dense vision and copy losses;
- :mod:`.probe`: the training-only :class:`ConditioningProbe` and its slot labels;
- :mod:`.stages`: one function per stage;
- :mod:`.driver`: :func:`train_demo`, the worker process of stage (a) and the data-parallel ranks.

The measured variants behind the recipe's values are in ``docs/shapes_training.md``.
"""

from __future__ import annotations

from mobile_o_ros.shapes.train.data import (
    COLOUR_CLASSES,
    POSITION_CLASSES,
    SHAPE_CLASSES,
    SIZE_CLASSES,
    TOKENIZER_VOCAB,
    Cache,
    PromptTokens,
    build_cache,
    caption_qa_parts,
    conditioning_batch,
    copy_map,
    edit_batch,
    edited_object_index,
    encode_latents,
    gen_batch,
    join_conditioning,
    latent_object_mask,
    mcp_inputs_batch,
    pad_batch,
    pad_labels,
    short_vqa_prompt,
    splice,
    token_labels,
    token_objects,
    training_questions,
    vae_input,
    vision_input,
)
from mobile_o_ros.shapes.train.driver import (
    AutoencoderJob,
    generation_stages,
    machine_description,
    save_shapes_checkpoint,
    shapes_model,
    train_demo,
)
from mobile_o_ros.shapes.train.losses import (
    balanced_ce,
    caption_qa_loss,
    continue_from_prefixes,
    copy_attention_loss,
    cross_attention_probs,
    cross_attention_tap,
    dense_loss,
    eager_attention,
    flow_loss,
    image_vqa_loss,
    image_vqa_losses,
    vqa_loss_shared,
    vqa_losses_shared,
    weighted_next_token_ce,
)
from mobile_o_ros.shapes.train.probe import ConditioningProbe, make_probe, probe_loss, slot_labels
from mobile_o_ros.shapes.train.recipe import Log, Recipe
from mobile_o_ros.shapes.train.stages import (
    StageReport,
    _flow_rows,
    pretrain_vision,
    train_autoencoder,
    train_conditioning,
    train_dit,
    train_joint,
    train_vqa,
)

# The private names tests import from this package.
_COLOUR_CLASSES = COLOUR_CLASSES
_SHAPE_CLASSES = SHAPE_CLASSES
_POSITION_CLASSES = POSITION_CLASSES
_probe_loss = probe_loss

__all__ = [
    "COLOUR_CLASSES",
    "POSITION_CLASSES",
    "SHAPE_CLASSES",
    "SIZE_CLASSES",
    "TOKENIZER_VOCAB",
    "_COLOUR_CLASSES",
    "_POSITION_CLASSES",
    "_SHAPE_CLASSES",
    "AutoencoderJob",
    "Cache",
    "ConditioningProbe",
    "Log",
    "PromptTokens",
    "Recipe",
    "StageReport",
    "_flow_rows",
    "_probe_loss",
    "balanced_ce",
    "build_cache",
    "caption_qa_loss",
    "caption_qa_parts",
    "conditioning_batch",
    "continue_from_prefixes",
    "copy_attention_loss",
    "copy_map",
    "cross_attention_probs",
    "cross_attention_tap",
    "dense_loss",
    "eager_attention",
    "edit_batch",
    "edited_object_index",
    "encode_latents",
    "flow_loss",
    "gen_batch",
    "generation_stages",
    "image_vqa_loss",
    "image_vqa_losses",
    "join_conditioning",
    "latent_object_mask",
    "machine_description",
    "make_probe",
    "mcp_inputs_batch",
    "pad_batch",
    "pad_labels",
    "pretrain_vision",
    "probe_loss",
    "save_shapes_checkpoint",
    "shapes_model",
    "short_vqa_prompt",
    "slot_labels",
    "splice",
    "token_labels",
    "token_objects",
    "train_autoencoder",
    "train_conditioning",
    "train_demo",
    "train_dit",
    "train_joint",
    "train_vqa",
    "training_questions",
    "vae_input",
    "vision_input",
    "vqa_loss_shared",
    "vqa_losses_shared",
    "weighted_next_token_ce",
]
