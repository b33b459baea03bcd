"""The training-only conditioning probe (shapes/train/probe.py) and its slot labels."""

from __future__ import annotations

import pytest
import torch

from mobile_o_ros.shapes import world
from mobile_o_ros.shapes.train.probe import ConditioningProbe, probe_loss, slot_labels


def test_slot_labels_say_what_is_where() -> None:
    scene = world.Scene(
        "black",
        (world.Shape("triangle", "blue", "top", "small"), world.Shape("circle", "red", "centre", "large")),
    )
    labels = slot_labels(scene)
    positions = list(world.POSITIONS)
    assert labels.shape == (len(positions) + 1, 3)
    top = labels[positions.index("top")].tolist()
    assert top == [list(world.COLOURS).index("blue") + 1, world.SHAPES.index("triangle") + 1, 1]
    assert labels[positions.index("centre")].tolist()[1:] == [world.SHAPES.index("circle") + 1, 2]
    assert labels[positions.index("left")].tolist() == [0, 0, 0]
    assert labels[-1].tolist() == [list(world.BACKGROUNDS).index("black"), 0, 0]


@pytest.mark.slow
def test_conditioning_probe_learns_a_slot_and_skips_unconditional_rows() -> None:
    torch.manual_seed(0)
    scenes = [world.make_scene(s) for s in range(4)]
    labels = torch.stack([slot_labels(s) for s in scenes])
    # Token j of scene i says "slot j of scene i" (one-hot), then a padded token: the probe must route each
    # slot's query to its own token and read it.
    slots = labels.shape[1]
    cond = torch.zeros(4, slots + 1, 4 * slots)
    for i in range(4):
        cond[i, torch.arange(slots), i * slots + torch.arange(slots)] = 1.0
    mask = torch.ones(4, slots + 1, dtype=torch.long)
    mask[:, -1] = 0
    probe = ConditioningProbe(4 * slots, dim=16)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
    first, right = probe(cond, mask, labels)
    for _ in range(300):
        loss, right = probe(cond, mask, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first.item() and right.item() == 1.0
    keep = torch.tensor([True, False, True, False])
    assert torch.allclose(
        probe_loss(probe, cond, mask, keep, scenes), probe(cond[keep], mask[keep], labels[keep])[0]
    )
    assert float(probe_loss(probe, cond, mask, torch.zeros(4, dtype=torch.bool), scenes)) == 0.0
    assert float(probe_loss(None, cond, mask, keep, scenes)) == 0.0
