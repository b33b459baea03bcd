"""Data-parallel training over local processes (shapes/parallel.py): two real gloo ranks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mobile_o_ros.shapes import parallel

pytestmark = pytest.mark.slow


def _data_parallel_rows(rank: int) -> tuple[Any, Any]:
    """Rank ``rank``'s half of a fixed batch (x [3, 4], y [3, 2])."""
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 2, generator=g)
    return x[3 * rank : 3 * rank + 3], y[3 * rank : 3 * rank + 3]


def _data_parallel_step(out_file: Path | None) -> tuple[list[Any], float]:
    """One averaged-gradient step of a fixed linear model on this rank's half; rank 1 saves what it got."""
    torch.manual_seed(0)
    layer, unused = torch.nn.Linear(4, 2), torch.nn.Linear(1, 1)
    x, y = _data_parallel_rows(parallel.rank())
    loss = (layer(x) - y).pow(2).mean()
    loss.backward()
    params = [*layer.parameters(), *unused.parameters()]
    value = parallel.average_gradients(params, loss)
    grads = [None if p.grad is None else p.grad.clone() for p in params]
    if out_file is not None:
        torch.save((grads, value), out_file)
    return grads, value


def test_data_parallel_ranks_apply_the_whole_batchs_mean_gradient(tmp_path: Path) -> None:
    """Two real processes (gloo): each rank ends with the gradient and loss of the whole batch's mean, as
    one process computes them; a parameter no rank used keeps no gradient."""
    with parallel.workers(2, _data_parallel_step, (tmp_path / "rank1.pt",)):
        assert parallel.world_size() == 2 and parallel.share(24) == 12 and parallel.share(5) == 3
        grads0, loss0 = _data_parallel_step(None)
    assert not parallel.active() and parallel.share(24) == 24
    grads1, loss1 = torch.load(tmp_path / "rank1.pt")
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 2)
    x, y = zip(_data_parallel_rows(0), _data_parallel_rows(1), strict=True)
    whole = (layer(torch.cat(x)) - torch.cat(y)).pow(2).mean()
    whole.backward()
    for got in (grads0, grads1):
        assert got[2] is None and got[3] is None
        for g, p in zip(got[:2], layer.parameters(), strict=True):
            assert torch.allclose(g, p.grad, atol=1e-6)
    assert loss0 == loss1 == pytest.approx(float(whole.detach()), rel=1e-6)


def test_data_parallel_worker_failure_is_an_error(tmp_path: Path) -> None:
    rank1_file = tmp_path / "missing" / "rank1.pt"  # rank 1 fails to save after the step
    with pytest.raises(RuntimeError), parallel.workers(2, _data_parallel_step, (rank1_file,)):
        _data_parallel_step(None)
