"""The training recipe of the shapes model: sizes, steps, learning rates and loss weights of every stage.

Stages: (a) autoencoder, (b1) vision tower, (b2) VLM, (c0) conditioning, (c) DiT + MCP, (d) joint (see
:mod:`mobile_o_ros.shapes.train`). Steps count optimiser steps; batch sizes count rows per step over all
data-parallel processes. What each non-default value measured is in ``docs/shapes_training.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: Progress lines of the stages (``print``, or a logger's ``info``).
Log = Callable[[str], None]


@dataclass
class Recipe:
    """Sizes and steps of every stage (defaults: the full recipe; its time on 2 CPU cores is in the model
    card and ``training_report.json``)."""

    # (a) autoencoder
    ae_steps: int = 400
    ae_batch: int = 16  # renders per step
    ae_lr: float = 3e-3
    ae_object_weight: float = 4.0  # reconstruction loss × (1 + this) on object pixels
    ae_latent_l2: float = 1e-3  # × the latents' mean square, added to the loss
    ae_clip: float = 5.0  # gradient-norm clip
    # (b1) vision tower pre-training (dense labels)
    vis_steps: int = 150
    vis_batch: int = 16  # renders per step
    vis_lr: float = 3e-3
    # (b2) VQA + caption QA (projector + LLM, cached vision features)
    vlm_short_steps: int = 150  # warm-up steps in the short format (no chat template)
    vlm_steps: int = 300  # steps in the chat format, after the warm-up
    vlm_images: int = 8  # cached source images per step
    vlm_rounds: int = 2  # question rounds per image (one prefix per image; questions are cheap)
    vlm_captions: int = 16  # captions per step, questioned as text
    vlm_lr: float = 1e-3
    # × the attention loss of vqa_losses_shared (from the answer's token onto the asked-about objects' image
    # tokens), beside the answer CE in (b2), (c0) and (d); 0: off.
    vqa_attention_weight: float = 1.0
    # (category, weight) of questions in the VQA answer CE and attention loss of (b2), (c0) and (d): a
    # weight k counts like k copies of the question (other categories: 1).
    vqa_question_weights: tuple[tuple[str, float], ...] = (("position", 3.0), ("shape", 2.0))
    vqa_attention_layers: tuple[int, ...] = (2,)  # LLM layers whose attention the attention loss reads
    # cached sets for (b2), (c) and (d)
    gen_scenes: int = 3000  # target scenes (captions, latents)
    src_scenes: int = 1500  # edits into them (source images: vision features; also the VQA images)
    # (c0) conditioning: LLM + MCP on a slot read-out of the MCP output (ConditioningProbe), and the VQA
    # loss (× ce_weight) on cond_vqa images per step so that the LLM keeps answering.
    cond_steps: int = 350
    cond_batch: int = 24  # caption rows per step
    cond_edits: int = 30  # edit-prompt rows (source image + instruction) per step
    cond_vqa: int = 4  # images per step whose questions give the VQA loss (0: none)
    cond_lr: float = 2e-3  # MCP and probe
    cond_llm_lr: float = 1e-3  # projector and LLM
    probe_weight: float = 0.1  # the probe's loss beside the flow loss in (c) and (d)
    # (c) DiT + MCP
    dit_steps: int = 2100
    dit_batch: int = 32  # caption rows per step
    dit_lr: float = 2e-3
    uncond_prob: float = 0.1  # chance that a row is CFG's unconditional one (zero MCP input), in (c) and (d)
    train_shift: float = 3.0  # timestep shift of σ's distribution in the flow loss (1: uniform t)
    high_noise: float = 0.0  # fraction of rows whose σ is drawn uniform in [0.9, 1] instead
    dit_object_weight: float = 4.0  # flow loss × (1 + this) on and next to objects (latent pixels), (c), (d)
    # Edit rows per step in (c), beside the dit_batch caption rows (the LLM frozen).
    dit_edits: int = 16
    # On edit rows, the flow loss's object weight also covers the source's objects (the cells a remove or a
    # move empties), in (c) and (d).
    dit_edit_source_weight: bool = True
    dit_train_llm: bool = False  # whether (c) trains the LLM too (at joint_llm_lr)
    dit_train_mcp: bool = True  # whether (c) trains the MCP, and the probe beside it (else no probe losses)
    # × the copy loss (:func:`copy_attention_loss`) on edit rows in (c) and (d): head 0 of the DiT's
    # cross-attention in each layer of ``dit_copy_layers`` attends, from each latent cell the edit leaves
    # unchanged, to the source image's token of the same cell (with ``dit_copy_changed``, from the changed
    # cells too, as :func:`copy_map` says).
    dit_copy_weight: float = 0.3
    dit_copy_layers: tuple[int, ...] = (2,)  # DiT layers whose head 0 gets the copy loss (summed)
    dit_copy_changed: bool = True
    # × the probe's referent loss (:meth:`ConditioningProbe.referent_loss`) on edit rows in (c) and (d): the
    # input of layer ``dit_referent_layer``'s cross-attention must say, per token, whether it lies on the
    # object the instruction names (source) and where that object goes (target), at every noise level
    # (before the noisy latent shows where it is).
    dit_referent_weight: float = 3.0
    dit_referent_layer: int = 3
    # × the probe's content loss (:meth:`ConditioningProbe.content_loss`) on all conditional rows in (c) and
    # (d): the input of layer ``dit_content_layer``'s cross-attention must say, per token, the colour and
    # shape of what the target image shows there (a supervised REPA-like alignment of the DiT's tokens).
    dit_content_weight: float = 0.3
    dit_content_layer: int = 4
    # (d) joint
    joint_steps: int = 400
    joint_gen: int = 12  # caption rows per step
    joint_edit: int = 12  # edit rows per step
    joint_vqa: int = 4  # images per step whose questions give the VQA loss
    joint_lr: float = 1e-3  # MCP, DiT and probe (the MCP's layer weights: × 10)
    joint_llm_lr: float = 3e-4  # projector and LLM
    # × the VQA loss in (c0) and (d) (the paper: 0.2; higher here to keep VQA while the flow loss trains
    # the LLM, not measured)
    ce_weight: float = 0.5
    # misc
    parallel_autoencoder: bool = True  # stage (a) in a worker process alongside (b1) and (b2)
    data_parallel: int = 2  # processes (1 torch thread each) sharing every batch of stages (c0), (c), (d)
    warmup_frac: float = 0.05  # linear LR warm-up, as a fraction of each stage's steps (then cosine to 0.1×)
    log_every: int = 50  # steps between progress lines

    @classmethod
    def quick(cls) -> Recipe:
        """A few steps of every stage on tiny sets (for tests)."""
        return cls(
            ae_steps=12,
            ae_batch=4,
            vis_steps=9,
            vis_batch=4,
            vlm_short_steps=5,
            vlm_steps=9,
            vlm_images=2,
            vlm_captions=2,
            gen_scenes=24,
            src_scenes=8,
            cond_steps=9,
            cond_batch=6,
            cond_edits=2,
            cond_vqa=2,
            dit_steps=24,
            dit_batch=8,
            dit_edits=2,
            joint_steps=15,
            joint_gen=6,
            joint_edit=6,
            joint_vqa=2,
            joint_lr=2e-3,
            log_every=4,
        )
