"""Training data (shapes/train/data.py): dense labels, the cache's per-edit maps and weights, batches."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from mobile_o_ros.model_config import preset
from mobile_o_ros.reference.checkpoint import build_model
from mobile_o_ros.shapes import world
from mobile_o_ros.shapes.train.data import (
    COLOUR_CLASSES,
    POSITION_CLASSES,
    SHAPE_CLASSES,
    Cache,
    conditioning_batch,
    copy_map,
    join_conditioning,
    latent_object_mask,
    token_labels,
    token_objects,
)
from mobile_o_ros.shapes.train.driver import shapes_model
from mobile_o_ros.shapes.train.losses import flow_loss


def test_token_objects_agree_with_the_dense_labels() -> None:
    scene = world.make_scene(11)
    which = token_objects(scene, grid=8)
    labels = token_labels(scene, grid=8)
    assert set(np.unique(which)) <= set(range(len(scene.objects) + 1)) and (which > 0).any()
    for k, o in enumerate(scene.objects):
        assert (labels[which == k + 1, 0] == COLOUR_CLASSES.index(o.colour)).all()
    assert (labels[which == 0, 0] == 0).all()


def test_token_labels_follow_the_render() -> None:
    scene = world.Scene("grey", (world.Shape("square", "red", "left", "large"),))
    labels = token_labels(scene, grid=8)
    assert labels.shape == (64, 7)
    colour = labels[:, 0].reshape(8, 8)
    assert colour[4, 1] == COLOUR_CLASSES.index("red") and colour[4, 6] == 0 and colour[0, 0] == 0
    assert (labels[:, 1] > 0).sum() == (labels[:, 0] > 0).sum() >= 4
    assert set(labels[labels[:, 0] > 0, 3]) == {POSITION_CLASSES.index("left")}
    assert labels[9, 4] == 1 and labels[9, 5] == 1  # row, column of token 9
    assert set(labels[:, 6]) == {list(world.BACKGROUNDS).index("grey")}


def test_referent_cells_mark_the_named_object_in_the_source_and_the_target() -> None:
    """Column 0: the tokens the named object covers in the source; column 1: where it is in the target (the
    same cells for a recolour, the new position's for a move, none for a remove)."""
    rng = random.Random(11)
    scene = next(s for s in world.make_scenes("train", 40) if len(s.objects) == 2)
    edits = [world.make_edit(scene, rng, kind) for kind in ("recolour", "move", "remove")]
    cache = Cache([e.target for e in edits], edits, torch.zeros(3, 64, 4), [0, 1, 2])
    recolour, move, remove = (cache.referent_cells(i, 8) for i in range(3))
    for cells, e in zip((recolour, move, remove), edits, strict=True):
        k = e.source.objects.index(e.obj)
        assert torch.equal(cells[:, 0].bool(), torch.from_numpy(token_objects(e.source, 8) == k + 1))
        assert bool(cells[:, 0].any())
    assert torch.equal(recolour[:, 1], recolour[:, 0]) and not bool(remove[:, 1].any())
    k = next(j for j, o in enumerate(edits[1].target.objects) if o.position == edits[1].new_position)
    assert torch.equal(move[:, 1].bool(), torch.from_numpy(token_objects(edits[1].target, 8) == k + 1))
    assert not bool((move[:, 0] * move[:, 1]).any())  # a move goes to another named position


def test_content_labels_give_the_colour_and_shape_under_each_token() -> None:
    """Cache.content_labels: per token of the target scene, the colour and shape classes of the object that
    covers it (token_labels' first two columns), 0 on the background."""
    scene = next(s for s in world.make_scenes("train", 40) if len(s.objects) == 3)
    cache = Cache([scene], [], torch.zeros(0), [])
    labels = cache.content_labels(0, 8)
    which = token_objects(scene, 8)
    assert labels.shape == (64, 2) and labels.dtype == torch.int64
    assert not bool(labels[torch.from_numpy(which == 0)].any())
    for k, obj in enumerate(scene.objects):
        on = torch.from_numpy(which == k + 1)
        assert bool(on.any())
        assert set(labels[on, 0].tolist()) == {COLOUR_CLASSES.index(obj.colour)}
        assert set(labels[on, 1].tolist()) == {SHAPE_CLASSES.index(obj.shape)}
    assert cache.content_labels(0, 8) is labels  # memoised


def _cells_of(scene: world.Scene, obj: world.Shape) -> np.ndarray:
    """Indices of the 8 × 8 cells that ``obj`` covers in a 64 px render of ``scene``."""
    labels = world.render_labels(scene, 64).reshape(8, 8, 8, 8).transpose(0, 2, 1, 3).reshape(64, 64)
    return np.flatnonzero((labels == scene.objects.index(obj) + 1).any(1))


def test_copy_map_says_where_each_cell_of_the_edit_comes_from() -> None:
    """Unchanged cells copy their own token; recoloured cells too; a moved object's new cells copy the cells
    it stood on; cells left empty copy background tokens."""

    def background(scene: world.Scene) -> np.ndarray:  # cells showing only the background colour
        img = world.render(scene, 64) == np.asarray(world.BACKGROUNDS[scene.background])
        return img.all(-1).reshape(8, 8, 8, 8).all(axis=(1, 3)).reshape(64)

    rng = random.Random(3)
    for kind in world.EDIT_KINDS:
        edit = next(
            world.make_edit(s, rng, kind)
            for s in world.make_scenes("train", 50)
            if len(s.objects) == 2 and s.background == "white"
        )
        plain = copy_map(edit, 8).numpy()
        full = copy_map(edit, 8, changed=True).numpy()
        assert (
            plain.shape == (64, 64) and (plain.sum(1) <= 1).all() and (plain == np.diag(np.diag(plain))).all()
        )
        old = _cells_of(edit.source, edit.obj)
        assert (
            not plain[old].any() and np.diag(plain)[background(edit.source) & background(edit.target)].all()
        )
        assert (full[np.diag(plain)] == plain[np.diag(plain)]).all()  # the unchanged cells as before
        if kind == "recolour":
            assert all(full[c, c] and full[c].sum() == 1 for c in old)
        if kind == "move":
            moved = next(o for o in edit.target.objects if o.position == edit.new_position)
            new = _cells_of(edit.target, moved)
            rows, cols = np.divmod(full[new].argmax(1), 8)
            assert (full[new].sum(1) == 1).all()
            dx, dy = (
                np.subtract(world.POSITIONS[edit.new_position], world.POSITIONS[edit.obj.position]) * 8
            ).round()
            assert abs(np.median(new % 8 - cols) - dx) <= 1 and abs(np.median(new // 8 - rows) - dy) <= 1
        if kind in ("remove", "move"):
            emptied = [c for c in old if full[c].sum() > 1]
            assert emptied and all((full[c] == background(edit.source)).all() for c in emptied)


def test_flow_weights_of_an_edit_row_cover_what_the_edit_takes_away() -> None:
    """Caption rows weigh their scene's objects; an edit row its target's, and with ``with_source`` also the
    source's: the cells a remove empties weigh as much as the objects drawn."""
    rng = random.Random(5)
    scenes = [s for s in world.make_scenes("train", 40) if len(s.objects) == 2][:3]
    edits = [world.make_edit(scenes[1], rng, "remove")]
    scenes[1] = edits[0].target  # the cache holds the edits' targets
    masks = torch.stack([latent_object_mask(s, 16, 128) for s in scenes])
    cache = Cache(scenes, edits, torch.zeros(1, 64, 4), [1], object_masks=masks)
    cache.source_masks = torch.stack([latent_object_mask(e.source, 16, 128) for e in edits])
    without = cache.flow_weights([0, 2], [0], 4.0)
    with_source = cache.flow_weights([0, 2], [0], 4.0, with_source=True)
    assert without.shape == (3, 1, 16, 16) and torch.equal(without[:2], 1 + 4 * masks[[0, 2]])
    assert torch.equal(without[2], 1 + 4 * masks[1]) and torch.equal(with_source[:2], without[:2])
    removed = latent_object_mask(world.Scene(edits[0].source.background, (edits[0].obj,)), 16, 128)
    gone = (removed[0] > 0) & (without[2, 0] == 1)  # next to the removed object only
    assert bool(gone.any()) and bool((with_source[2, 0][gone] == 5).all())
    assert torch.equal(with_source[2], torch.maximum(without[2], 1 + 4 * cache.source_masks[0]))
    assert cache.flow_weights([0], [0], 0.0, with_source=True) is None


def test_conditioning_batch_groups_rows_by_length_exactly(tmp_path: Path) -> None:
    model, _ = shapes_model(tmp_path, seed=0)
    torch.manual_seed(0)
    lengths, uncond = [5, 7, 5, 3, 7, 5], [False, False, True, False, False, False]
    stacked = torch.randn(len(lengths), model.mcp.num_layers, 7, model.config.hidden_size)
    with torch.no_grad():
        cond, mask = conditioning_batch(model, stacked, lengths, uncond)
        for i, n in enumerate(lengths):
            h = stacked[i : i + 1, :, :n]
            alone = model.mcp(torch.zeros_like(h) if uncond[i] else h)[0]
            assert torch.allclose(cond[i, :n], alone, atol=1e-5)
            assert mask[i].sum() == n and not cond[i, n:].any()


def test_joined_conditioning_leaves_each_rows_prediction_alone() -> None:
    """Stage (d) runs generation and edit rows through one DiT call: padding a row's conditioning to a
    longer batch (masked) leaves the DiT's prediction for it as it was; per-row flow losses average to
    the batch loss."""
    torch.manual_seed(0)
    model = build_model(preset("shapes", vocab_size=1006)).eval()
    width = int(model.config.dit["caption_channels"])
    a = (torch.randn(2, 5, width), torch.ones(2, 5, dtype=torch.long))
    b = (torch.randn(3, 9, width), torch.ones(3, 9, dtype=torch.long))
    cond, mask = join_conditioning([a, b])
    assert cond.shape[:2] == (5, 9) and mask.sum(1).tolist() == [5, 5, 9, 9, 9]
    x = torch.randn(5, *model.config.latent_shape)
    t = torch.full((5,), 500.0)
    with torch.no_grad():
        joined = model.dit(x, encoder_hidden_states=cond, timestep=t, encoder_attention_mask=mask)[0]
        alone = model.dit(x[:2], encoder_hidden_states=a[0], timestep=t[:2], encoder_attention_mask=a[1])[0]
        assert torch.allclose(joined[:2], alone, atol=1e-5)
        rows = flow_loss(model, x, cond, mask, torch.Generator().manual_seed(1), 3.0, per_row=True)
        mean = flow_loss(model, x, cond, mask, torch.Generator().manual_seed(1), 3.0)
    assert rows.shape == (5,) and torch.allclose(rows.mean(), mean, atol=1e-6)
    with torch.no_grad():
        uniform = torch.full((5, 1, 16, 16), 3.0)
        flat = flow_loss(model, x, cond, mask, torch.Generator().manual_seed(1), 3.0, weight=uniform)
    assert torch.allclose(flat, mean, atol=1e-6)  # uniform weights: the unweighted loss
