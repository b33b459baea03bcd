"""Data-parallel training over local processes (``torch.distributed``, gloo), for the shapes recipe.

One torch thread per process runs this model's steps as fast as two (its ops are too small to split), so
the second core of a 2-core machine is only used by a second process. Each rank draws its own share of a
step's batch; :func:`average_gradients` makes every rank apply the mean gradient, so the ranks hold the same
weights after every step and rank 0's model is the result. Rank 0 is the calling process; the others are
spawned by :class:`Workers` and run the same stage code.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

#: How long a collective waits for a peer before failing (a dead peer otherwise surfaces quickly as a
#: closed connection; this bounds the rest).
TIMEOUT = datetime.timedelta(minutes=10)


def active() -> bool:
    """Whether this process is one rank of a data-parallel group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the group (1 outside one)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank (0 outside a group)."""
    return dist.get_rank() if active() else 0


def share(batch: int) -> int:
    """This rank's share of a step's batch of ``batch`` rows (the batch divided by the world size; the
    recipe's batches divide evenly by 2, so every rank's mean has the same weight)."""
    n = world_size()
    return batch // n + (1 if rank() < batch % n else 0)


def init(rank_: int, world: int, init_file: str) -> None:
    """Join the group through a rendezvous file (no network port to pick)."""
    dist.init_process_group(
        "gloo", init_method=Path(init_file).as_uri(), rank=rank_, world_size=world, timeout=TIMEOUT
    )


def average_gradients(params: Sequence[torch.nn.Parameter], loss: torch.Tensor) -> float:
    """All-reduce the gradients of ``params`` to their mean over the ranks (one flat buffer) and return
    the mean of ``loss`` over the ranks; outside a group, just the loss. A parameter no rank produced a
    gradient for keeps ``grad = None`` (as a single process would leave it)."""
    if not active():
        return float(loss.detach())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    flat = torch.cat([g.reshape(-1) for g in grads] + [has, loss.detach().reshape(1).float()])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()
    for p, h in zip(params, flat[offset : offset + len(params)].tolist(), strict=True):
        if h == 0:
            p.grad = None
    return float(flat[-1])


def _worker_main(fn: Callable[..., Any], rank_: int, world: int, init_file: str, args: tuple) -> None:
    torch.set_num_threads(1)
    init(rank_, world, init_file)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def workers(world: int, fn: Callable[..., Any], args: tuple) -> Iterator[None]:
    """Run ``fn(*args)`` in ``world − 1`` spawned processes (ranks 1…) while the body runs here as rank 0
    (the body must run the same collectives, in the same order, as ``fn``). ``world`` 1: the body alone.

    A worker that fails makes rank 0's next collective fail; a body that fails stops the workers."""
    if world <= 1:
        yield
        return
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="mobile-o-dp-") as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        procs = [
            ctx.Process(target=_worker_main, args=(fn, r, world, init_file, args), daemon=True)
            for r in range(1, world)
        ]
        for p in procs:
            p.start()
        ok = False
        try:
            init(0, world, init_file)
            try:
                yield
                ok = True
            finally:
                dist.destroy_process_group()
        finally:
            for p in procs:
                p.join(timeout=60 if ok else 1)
                if p.is_alive():
                    p.terminate()
                    p.join()
        bad = [p.exitcode for p in procs if p.exitcode]
        if ok and bad:
            raise RuntimeError(f"a data-parallel worker exited with code {bad[0]}")
