"""Training stages (shapes/train/stages.py): the auxiliary losses of one DiT batch of stages (c) and (d)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from shapes_train_support import untrained_shapes_model

from mobile_o_ros.shapes import world
from mobile_o_ros.shapes.train.data import Cache
from mobile_o_ros.shapes.train.losses import cross_attention_tap
from mobile_o_ros.shapes.train.probe import ConditioningProbe, make_probe
from mobile_o_ros.shapes.train.recipe import Recipe
from mobile_o_ros.shapes.train.stages import _flow_rows


def _two_edit_cache(model: Any) -> Any:
    """A training cache of a move and a recolour into two two-object scenes (edit i's target: scene i), with
    random source features and latents."""
    rng = random.Random(2)
    scenes = [s for s in world.make_scenes("train", 40) if len(s.objects) == 2][:2]
    edits = [world.make_edit(scenes[0], rng, "move"), world.make_edit(scenes[1], rng, "recolour")]
    n = model.config.num_image_tokens
    cache = Cache([e.target for e in edits], edits, torch.randn(2, n, model.config.mm_hidden_size), [0, 1])
    cache.latents = torch.randn(2, *model.config.latent_shape)
    return cache


def _auxiliary_loss(model: Any, tok: Any, cache: Any, probe: Any, **recipe: Any) -> Any:
    """The auxiliary loss of one DiT batch (the caption of scene 0, then edits 0 and 1, no CFG drop) under a
    recipe whose auxiliary weights are 0 except those given."""
    zero = {
        "probe_weight": 0.0,
        "dit_copy_weight": 0.0,
        "dit_referent_weight": 0.0,
        "dit_content_weight": 0.0,
    }
    settings = dataclasses.replace(Recipe(), uncond_prob=0.0, **{**zero, **recipe})
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        return _flow_rows(model, tok, cache, [0], [0, 1], random.Random(1), gen, settings, False, probe)[1]


def test_referent_loss_reads_the_dit_tokens_entering_its_layers_cross_attention(tmp_path: Path) -> None:
    """With ``dit_referent_weight`` w, the auxiliary loss of a DiT batch grows by exactly w × the probe's
    binary CE on the edit rows' hidden states at the input of layer ``dit_referent_layer``'s
    cross-attention against the edits' referent cells; a probe without the head adds nothing."""
    tok, model = untrained_shapes_model(tmp_path)
    cache = _two_edit_cache(model)
    probe = make_probe(model.config)
    weighted = {"dit_referent_weight": 0.5, "dit_referent_layer": 1}
    with cross_attention_tap(model, [1]) as seen:
        assert float(_auxiliary_loss(model, tok, cache, probe)) == 0.0
        hidden = seen[1][1][1:]
        cells = torch.stack([cache.referent_cells(i, 8) for i in (0, 1)])
        expected = 0.5 * probe.referent_loss(hidden, cells).detach()
    assert float(expected) > 0
    assert torch.allclose(_auxiliary_loss(model, tok, cache, probe, **weighted), expected, atol=1e-6)
    headless = ConditioningProbe(int(model.config.dit["caption_channels"]))
    assert float(_auxiliary_loss(model, tok, cache, headless, **weighted)) == 0.0


@pytest.mark.slow
def test_content_loss_reads_every_conditional_rows_dit_tokens(tmp_path: Path) -> None:
    """With ``dit_content_weight`` w, the auxiliary loss of a DiT batch grows by exactly w × the probe's
    content CE on the hidden states of every row (captions, then edits) at the input of layer
    ``dit_content_layer``'s cross-attention against their target scenes' content labels."""
    tok, model = untrained_shapes_model(tmp_path)
    cache = _two_edit_cache(model)
    probe = make_probe(model.config)
    with cross_attention_tap(model, [4]) as seen:
        assert float(_auxiliary_loss(model, tok, cache, probe)) == 0.0
        hidden = seen[4][1]
        labels = torch.stack([cache.content_labels(j, 8) for j in (0, 0, 1)])  # caption 0, edits into 0, 1
        expected = 0.25 * probe.content_loss(hidden, labels).detach()
    assert float(expected) > 0
    weighted = {"dit_content_weight": 0.25, "dit_content_layer": 4}
    assert torch.allclose(_auxiliary_loss(model, tok, cache, probe, **weighted), expected, atol=1e-6)
