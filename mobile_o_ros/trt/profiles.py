"""Optimisation profiles per graph and build target, and the DiT text-length buckets.

A profile is written per *axis name* of the manifest (``seq``, ``cache_len``, ``text_len``, ``batch``) as
``(min, opt, max)``; :func:`input_shapes` turns it into per-input shapes using the manifest's I/O spec, so
the profiles follow the exported graphs rather than hard-coding tensor ranks.

Per graph (``P`` = the target's longest prompt, ``C`` = its KV capacity):

* ``vision``: batch 1 (one image per request).
* ``llm``: two profiles, two execution contexts: prefill (seq 2..P, cache 2..C, opt 320/640) and
  decode (seq 1, cache 1..C). Question answering sizes the cache as prompt + answer rounded up to 64;
  the generation prefill uses a cache of the prompt's length (text-to-image prompts are ~30-110 tokens,
  edits ~290-360).
* ``mcp``: batch 1..2 (CFG runs [uncond, cond] as one batch), seq 1..P. The MCP runs at the *true* length:
  it is not padding-invariant (a global mean over tokens and zero-padded conv ends).
* ``dit``: one *static* profile per text bucket, each at batch 2 (CFG runs [uncond, cond] as one batch),
  so each bucket gets tactics tuned for its own shape and its own execution context (and CUDA graph). The
  backend pads the conditioning to the next bucket with mask zeros *after* the MCP; masked keys get softmax
  weight exp(-10000) = 0, so the padded call equals the unpadded one. A batch of 1 is repeated to 2 and
  the first row of the output returned (the rows of a batch are independent).
* ``vae_decoder``: static, no profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: axis name → (min, opt, max)
AxisProfile = dict[str, tuple[int, int, int]]
#: input name → (min shape, opt shape, max shape)
ShapeProfile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

#: The DiT inputs padded along axis 1 to a bucket (with zeros: zero conditioning, mask 0 = hidden).
DIT_TEXT_INPUTS = ("encoder_hidden_states", "encoder_attention_mask")
#: The DiT's batch in every profile: the CFG pair.
DIT_BATCH = 2


class ProfileError(ValueError):
    """A shape no optimisation profile of an engine covers, or a text longer than the largest bucket."""


@dataclass(frozen=True)
class Target:
    """A build target: builder resources and the shape ranges the engines must accept."""

    name: str
    description: str
    workspace_bytes: int
    opt_level: int
    max_prompt: int
    kv_capacity: int
    dit_buckets: tuple[int, ...]


TARGETS: dict[str, Target] = {
    "orin-nano": Target(
        "orin-nano",
        "Jetson Orin Nano 8 GB (JetPack 6, TensorRT 10.3): 1 GiB workspace, level 3",
        workspace_bytes=1 << 30,
        opt_level=3,
        max_prompt=512,
        kv_capacity=1024,
        dit_buckets=(64, 128, 256, 512),
    ),
    "desktop": Target(
        "desktop",
        "a desktop/server GPU: 4 GiB workspace, level 4, longer prompts",
        workspace_bytes=4 << 30,
        opt_level=4,
        max_prompt=1024,
        kv_capacity=2048,
        dit_buckets=(64, 128, 256, 512, 1024),
    ),
}


def get_target(name: str) -> Target:
    """The named target, or a ValueError listing the known ones."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r} (known: {', '.join(TARGETS)})")
    return TARGETS[name]


def _rng(lo: int, opt: int, hi: int) -> tuple[int, int, int]:
    lo = min(lo, hi)
    return lo, max(lo, min(opt, hi)), hi


def profiles_for(graph: str, target: str | Target) -> list[AxisProfile]:
    """The optimisation profiles of ``graph`` for ``target`` as axis ranges (empty for static graphs)."""
    t = get_target(target) if isinstance(target, str) else target
    p, c, b = t.max_prompt, t.kv_capacity, t.dit_buckets
    table: dict[str, list[AxisProfile]] = {
        "vision": [{"batch": (1, 1, 1)}],
        "llm": [
            {"seq": _rng(2, 320, p), "cache_len": _rng(2, 640, c)},
            {"seq": (1, 1, 1), "cache_len": _rng(1, 640, c)},
        ],
        "mcp": [{"batch": (1, 2, 2), "seq": _rng(1, 128, p)}],
        "dit": [{"batch": (DIT_BATCH,) * 3, "text_len": (n, n, n)} for n in b],
        "vae_decoder": [],
    }
    if graph not in table:
        raise ValueError(f"no profiles for graph {graph!r} (known: {', '.join(table)})")
    return table[graph]


def input_shapes(inputs: list[dict[str, Any]], axes: AxisProfile) -> ShapeProfile:
    """Per-input (min, opt, max) shapes for the inputs with symbolic dims, from a manifest I/O spec."""
    out: ShapeProfile = {}
    for spec in inputs:
        dims = spec["shape"]
        if all(isinstance(d, int) and d > 0 for d in dims):
            continue
        shapes = []
        for k in range(3):
            shape = []
            for d in dims:
                if isinstance(d, int) and d > 0:
                    shape.append(d)
                elif isinstance(d, str) and d in axes:
                    shape.append(axes[d][k])
                else:
                    raise ProfileError(f"input {spec['name']!r} has dynamic axis {d!r} with no profile range")
            shapes.append(tuple(shape))
        out[spec["name"]] = (shapes[0], shapes[1], shapes[2])
    return out


def shape_profiles(graph_meta: dict[str, Any], graph: str, target: str | Target) -> list[ShapeProfile]:
    """The engine's profiles as per-input shapes: what the builder passes to ``set_shape``."""
    return [input_shapes(graph_meta["inputs"], axes) for axes in profiles_for(graph, target)]


def profiles_json(profiles: list[ShapeProfile]) -> list[dict[str, list[list[int]]]]:
    """A canonical JSON form of shape profiles (for cache keys and ``engines.json``)."""
    return [{name: [list(s) for s in mom] for name, mom in sorted(p.items())} for p in profiles]


def select_profile(
    ranges: list[dict[str, tuple[tuple[int, ...], tuple[int, ...]]]],
    shapes: dict[str, tuple[int, ...]],
    graph: str = "graph",
) -> int:
    """Index of the first profile whose (min, max) shapes contain every given input shape.

    ``ranges``: per profile, input name → (min shape, max shape); inputs absent from a profile are static.
    """
    for index, profile in enumerate(ranges):
        if all(
            name not in profile
            or (
                len(shape) == len(profile[name][0])
                and all(lo <= s <= hi for s, lo, hi in zip(shape, *profile[name], strict=True))
            )
            for name, shape in shapes.items()
        ):
            return index
    allowed = "; ".join(
        ", ".join(f"{n} {list(lo)}..{list(hi)}" for n, (lo, hi) in sorted(p.items())) for p in ranges
    )
    got = ", ".join(f"{n} {list(s)}" for n, s in sorted(shapes.items()))
    raise ProfileError(
        f"{graph}: shapes {got} are outside the engine's profiles ({allowed}); shorten the prompt or rebuild "
        "the engines with a larger target (mobile-o build-engines --target desktop)"
    )


def choose_bucket(length: int, buckets: tuple[int, ...] | list[int]) -> int:
    """The smallest bucket >= ``length`` (the DiT text length after the MCP)."""
    if length < 1:
        raise ProfileError(f"text length must be >= 1, got {length}")
    for b in sorted(buckets):
        if length <= b:
            return b
    raise ProfileError(
        f"text length {length} exceeds the largest DiT bucket {max(buckets)}; shorten the prompt"
    )


def pad_dit_feeds(
    feeds: dict[str, np.ndarray], buckets: tuple[int, ...] | list[int], batch: int = DIT_BATCH
) -> dict[str, np.ndarray]:
    """Pad the DiT's conditioning and mask along the text axis to the next bucket, with zeros, and a batch
    of 1 to ``batch`` (the row repeated).

    Zero mask entries hide the padded keys (additive -10000 before the softmax), so the velocity is the
    unpadded one. Only valid for the DiT: the MCP must run at the true length first.
    """
    out = dict(feeds)
    rows = {x.shape[0] for x in feeds.values()}
    if rows == {1} and batch > 1:
        out = {k: np.repeat(v, batch, axis=0) for k, v in out.items()}
    elif rows != {batch}:
        raise ProfileError(f"the DiT runs at batch 1 or {batch}, got {sorted(rows)}")
    length = feeds[DIT_TEXT_INPUTS[0]].shape[1]
    bucket = choose_bucket(length, buckets)
    if bucket == length:
        return out
    for name in DIT_TEXT_INPUTS:
        x = out[name]
        widths = [(0, 0)] * x.ndim
        widths[1] = (0, bucket - length)
        out[name] = np.pad(x, widths, mode="constant", constant_values=0)
    return out
