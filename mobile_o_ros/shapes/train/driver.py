"""``mobile-o train-demo``: build the shapes model, run the stages in their processes, write the checkpoint.

Stage (a) runs in a worker process beside (b1) and (b2) (:class:`AutoencoderJob`); stages (c0), (c) and
(d) are data-parallel over ``Recipe.data_parallel`` processes (:mod:`mobile_o_ros.shapes.parallel`).
:func:`train_demo` is the entry point.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobile_o_ros import prompts
from mobile_o_ros.model_config import MobileOConfig, preset
from mobile_o_ros.reference.checkpoint import build_model, save_checkpoint
from mobile_o_ros.reference.model import MobileO, count_parameters
from mobile_o_ros.reference.tiny_tokenizer import build_tiny_tokenizer
from mobile_o_ros.reference.vision import reparameterize
from mobile_o_ros.shapes import parallel, world
from mobile_o_ros.shapes.train.data import (
    TOKENIZER_VOCAB,
    Cache,
    PromptTokens,
    build_cache,
    encode_latents,
)
from mobile_o_ros.shapes.train.probe import ConditioningProbe, make_probe
from mobile_o_ros.shapes.train.recipe import Log, Recipe
from mobile_o_ros.shapes.train.stages import (
    StageReport,
    pretrain_vision,
    train_autoencoder,
    train_conditioning,
    train_dit,
    train_joint,
    train_vqa,
)
from mobile_o_ros.shapes.vocabulary import write_vocabulary


def shapes_model(out_dir: Path, seed: int) -> tuple[MobileO, PromptTokens]:
    """Write the tokenizer into ``out_dir``; build the untrained ``shapes`` model (vision: training form)."""
    vocab = build_tiny_tokenizer(
        out_dir, vocab_size=TOKENIZER_VOCAB, seed=seed, extra_corpus=world.language_corpus(seed=seed)
    )
    cfg: MobileOConfig = preset("shapes", vocab_size=vocab)
    tok = PromptTokens(out_dir / "tokenizer.json")
    cfg.llm["bos_token_id"] = tok.tok.token_to_id(prompts.ENDOFTEXT)
    cfg.llm["eos_token_id"] = tok.eos
    torch.manual_seed(seed)
    model = build_model(cfg, vision_inference_mode=False)
    return model, tok


def save_shapes_checkpoint(model: MobileO, out_dir: Path) -> Path:
    """Fold the vision tower (inference form, as released) and write config.json + model.safetensors (and
    the world's vocabulary.json)."""
    reparameterize(model.vision)
    model.eval()
    save_checkpoint(model, out_dir)
    write_vocabulary(out_dir)
    gen_cfg = {"eos_token_id": model.config.llm["eos_token_id"], "do_sample": False}
    (out_dir / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
    return out_dir


def _train_autoencoder_apart(
    config: MobileOConfig, recipe: Recipe, seed: int
) -> tuple[dict[str, torch.Tensor], StageReport, float]:
    """Stage (a) in a worker process (one torch thread): the VAE's weights, the report, scaling_factor."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = build_model(config, vision_inference_mode=False)
    report = train_autoencoder(model, recipe, random.Random(seed), lambda m: print(m, flush=True))
    return model.vae.state_dict(), report, float(model.config.vae["scaling_factor"])


class AutoencoderJob:
    """Stage (a) with a seed of its own: in a spawned worker process while stages (b1) and (b2) run here
    (``recipe.parallel_autoencoder``; the autoencoder is independent of them, and the VLM stages leave a
    core partly idle), else in this process. ``result()`` loads the weights into ``model`` and returns
    the stage's report; the same seed gives the same weights either way."""

    def __init__(self, model: MobileO, recipe: Recipe, seed: int, log: Log) -> None:
        self.model, self.recipe, self.seed, self.log = model, recipe, seed, log
        self._pool: Any = None
        self._future: Any = None

    def __enter__(self) -> AutoencoderJob:
        if self.recipe.parallel_autoencoder:
            import concurrent.futures
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            self._pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx)
            self._future = self._pool.submit(
                _train_autoencoder_apart, copy.deepcopy(self.model.config), self.recipe, self.seed
            )
            self.log("[a] autoencoder training in a worker process (1 thread)")
        return self

    def result(self) -> StageReport:
        """Wait for stage (a) (or run it here) and load its weights and ``scaling_factor`` into the model."""
        if self._future is None:
            torch.manual_seed(self.seed)
            self.model.vae.load_state_dict(
                build_model(self.model.config, vision_inference_mode=False).vae.state_dict()
            )
            return train_autoencoder(self.model, self.recipe, random.Random(self.seed), self.log)
        state, report, scaling = self._future.result()
        self.model.vae.load_state_dict(state)
        self.model.vae.eval()
        self.model.config.vae["scaling_factor"] = scaling
        return report

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def generation_stages(
    model: MobileO,
    tok: PromptTokens,
    cache: Cache,
    probe: ConditioningProbe,
    recipe: Recipe,
    rng: random.Random,
    log: Log,
) -> list[StageReport]:
    """Stages (c0), (c) and (d), in this process or as one rank of a data-parallel group (each rank draws
    its share of every batch from its own ``rng``; the gradients are averaged in :func:`_update`). The
    reported losses of (c0) and (c) are means over the ranks; the probe's read-outs and the parts of (d)'s
    loss are rank 0's (half of each batch)."""
    return [
        train_conditioning(model, tok, cache, probe, recipe, rng, log),
        train_dit(model, tok, cache, recipe, rng, log, probe),
        train_joint(model, tok, cache, recipe, rng, log, probe),
    ]


def _generation_stages_worker(
    config: MobileOConfig,
    state: dict[str, torch.Tensor],
    probe_state: dict[str, torch.Tensor],
    out_dir: Path,
    cache: Cache,
    recipe: Recipe,
    seed: int,
) -> None:
    """Rank ≥ 1 of :func:`generation_stages`: the same model and probe as rank 0, its own data."""
    model = build_model(config, vision_inference_mode=False)
    model.load_state_dict(state)
    probe = make_probe(config)
    probe.load_state_dict(probe_state)
    tok = PromptTokens(out_dir / "tokenizer.json")
    generation_stages(model, tok, cache, probe, recipe, random.Random(seed + parallel.rank()), lambda _: None)


def machine_description() -> dict[str, Any]:
    """The CPU the timings were measured on: stage times differ ~2.5× between machines of the same size
    (measured: the same recipe took 2035 s on one 2-core machine and 792 s on another)."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        model = names[0] if names else model
    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def train_demo(
    out_dir: str | Path,
    seed: int = 0,
    quick: bool = False,
    recipe: Recipe | None = None,
    log: Log = print,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train the shapes model from ``seed`` and write a checkpoint folder; returns the training report.

    ``quick`` runs :meth:`Recipe.quick` (a few steps per stage); ``threads``: torch threads of this process
    (None: as set; ``mobile-o train-demo`` passes 1, as the shipped model was trained). The report (also
    written as ``training_report.json``) holds per-stage steps, seconds and first/last losses, and the
    machine they were measured on.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    recipe = recipe or (Recipe.quick() if quick else Recipe())
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    random.seed(seed)
    np.random.seed(seed)
    rng = random.Random(seed)
    model, tok = shapes_model(out, seed)
    log(
        f"shapes model: {count_parameters(model):,} parameters "
        + ", ".join(
            f"{c} {count_parameters(model.component(c)):,}"
            for c in ("vision", "mm_projector", "llm", "mcp", "dit", "vae")
        )
    )
    ae_seed = rng.randrange(2**31)
    with AutoencoderJob(model, recipe, ae_seed, log) as autoencoder:
        stages = [pretrain_vision(model, recipe, rng, log)]
        cache = build_cache(model, recipe, rng, log)
        stages.append(train_vqa(model, tok, cache, recipe, rng, log))
        stages.insert(0, autoencoder.result())
    encode_latents(model, cache, log)
    probe = make_probe(model.config)
    stage_seed = rng.randrange(2**31)
    world_args = (copy.deepcopy(model.config), model.state_dict(), probe.state_dict(), out, cache, recipe)
    with parallel.workers(recipe.data_parallel, _generation_stages_worker, (*world_args, stage_seed)):
        if recipe.data_parallel > 1:
            log(f"[c0-d] data-parallel over {recipe.data_parallel} processes (1 torch thread each)")
        stages += generation_stages(model, tok, cache, probe, recipe, random.Random(stage_seed), log)
    save_shapes_checkpoint(model, out)
    total = time.perf_counter() - t_start
    report = {
        "seed": seed,
        "quick": quick,
        "recipe": dataclasses.asdict(recipe),
        "parameters": {
            c: count_parameters(model.component(c))
            for c in ("vision", "mm_projector", "llm", "mcp", "dit", "vae")
        },
        "stages": {s.name: s.summary() for s in stages},
        "cache_seconds": round(cache.seconds, 1),
        "total_seconds": round(total, 1),
        "main_process_cpu_seconds": round(time.process_time() - cpu_start, 1),
        "torch_threads": torch.get_num_threads(),
        "machine": machine_description(),
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out} in {total:.0f} s")
    return report
