"""``mobile-o parity``: every exported graph and the end-to-end results against the PyTorch reference."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobile_o_ros import prompts
from mobile_o_ros.export import graphs
from mobile_o_ros.reference.checkpoint import LoadedCheckpoint
from mobile_o_ros.reference.pipelines import ReferencePipeline, tokenizer_image_token
from mobile_o_ros.reference.preprocess import reference_preprocess
from mobile_o_ros.results import AskResult, ImageResult, Pipeline
from mobile_o_ros.runtime.engine import MobileORuntime, decode_mask

COSINE_THRESHOLD = 0.99999
PSNR_THRESHOLD_DB = 40.0


def compare(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Cosine similarity, max and mean absolute error of ``out`` against ``ref`` (both flattened, fp64)."""
    a = np.asarray(ref, dtype=np.float64).ravel()
    b = np.asarray(out, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {np.shape(ref)} vs {np.shape(out)}")
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    cos = float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))
    err = np.abs(a - b)
    return {
        "cosine": cos,
        "max_abs": float(err.max(initial=0.0)),
        "mean_abs": float(err.mean() if err.size else 0.0),
        "ref_max_abs": float(np.abs(a).max(initial=0.0)),
    }


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def test_image(size: int = 384, seed: int = 0) -> np.ndarray:
    """A deterministic non-square RGB test pattern (gradients, shapes and noise)."""
    rng = np.random.default_rng(seed)
    h, w = size, int(size * 4 / 3)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) % 256], axis=-1)
    img[h // 4 : h // 2, w // 4 : w // 2] = [220, 30, 30]
    img = img + rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _t2n(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def llm_parity(
    llm, run, embeds: torch.Tensor, hidden_states: torch.Tensor, n_layers: int, kv_heads: int, head_dim: int
) -> dict[str, Any]:
    """The ``llm`` graph against transformers: ``mcp_inputs`` of one prefill (zero cache, capacity L) against
    ``hidden_states`` [1, 4, L, D]; logits of a prefill of L−1 tokens, then of one cached decode step."""
    n = embeds.shape[1]
    logits = llm(inputs_embeds=embeds).logits[0]
    pos = np.arange(n, dtype=np.int64)
    full = run(
        "llm",
        {
            "inputs_embeds": _t2n(embeds),
            "position_ids": pos[None],
            "attention_mask": decode_mask(pos, n, graphs.MASK_VALUE),
            "kv_cache": np.zeros((n_layers, 2, 1, kv_heads, n, head_dim), np.float32),
        },
    )
    cap = n + 8
    cache = np.zeros((n_layers, 2, 1, kv_heads, cap, head_dim), np.float32)
    pos = np.arange(n - 1, dtype=np.int64)
    feeds = {
        "inputs_embeds": _t2n(embeds[:, :-1]),
        "position_ids": pos[None],
        "attention_mask": decode_mask(pos, cap, graphs.MASK_VALUE),
        "kv_cache": cache,
    }
    out = run("llm", feeds)
    last = np.array([n - 1], dtype=np.int64)
    feeds = {
        "inputs_embeds": _t2n(embeds[:, -1:]),
        "position_ids": last[None],
        "attention_mask": decode_mask(last, cap, graphs.MASK_VALUE),
        "kv_cache": out["kv_cache_out"],
    }
    out2 = run("llm", feeds)
    return {
        "mcp_inputs": compare(_t2n(hidden_states), full["mcp_inputs"]),
        "logits_prefill": compare(_t2n(logits[n - 2]), out["logits"][0]),
        "logits_decode_step": compare(_t2n(logits[n - 1]), out2["logits"][0]),
    }


@torch.inference_mode()
def graph_parity(
    loaded: LoadedCheckpoint, runtime: MobileORuntime, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per-graph errors on realistic inputs (real prompts, a test image, random latents)."""
    model, tok = loaded.model.float().eval(), loaded.tokenizer
    run = runtime.backend.run
    gen = torch.Generator().manual_seed(seed)
    results: dict[str, dict[str, Any]] = {}

    pixels = reference_preprocess(test_image(), size=model.config.image_size)
    ref = graphs.VisionGraph(model)(pixels)
    results["vision"] = {
        "image_embeds": compare(_t2n(ref), run("vision", {"images": _t2n(pixels)})["image_embeds"])
    }

    ids = tokenizer_image_token(prompts.generation_prompt("a red circle on the left and a blue square"), tok)
    embeds = model.embed_tokens(torch.tensor([ids]))
    stacked = torch.stack(model.mcp_inputs(embeds), dim=1)  # transformers' own hidden-state capture
    m = runtime.model_info
    results["llm"] = llm_parity(
        model.llm, run, embeds, stacked, m["num_layers"], m["num_key_value_heads"], m["head_dim"]
    )

    cfg_batch = torch.cat([torch.zeros_like(stacked), stacked], dim=0)
    cond = model.mcp(cfg_batch)
    results["mcp"] = {
        "conditioning": compare(_t2n(cond), run("mcp", {"hidden_states": _t2n(cfg_batch)})["conditioning"])
    }

    c, h, w = model.config.latent_shape
    dit_res = {}
    for t in (999, 500, 136):
        lat = torch.randn(2, c, h, w, generator=gen)
        ref_v = model.dit(
            hidden_states=lat,
            encoder_hidden_states=cond,
            timestep=torch.tensor([t, t]),
            encoder_attention_mask=None,
            return_dict=False,
        )[0]
        feeds = {
            "latents": _t2n(lat),
            "timestep": np.full((2,), float(t), np.float32),
            "encoder_hidden_states": _t2n(cond),
            "encoder_attention_mask": np.ones(cond.shape[:2], np.float32),
        }
        dit_res[f"velocity_t{t}"] = compare(_t2n(ref_v), run("dit", feeds)["velocity"])
    results["dit"] = dit_res

    lat = torch.randn(1, c, h, w, generator=gen) / model.config.vae_scaling_factor
    ref_img = model.vae.decode(lat).sample
    results["vae_decoder"] = {
        "image": compare(_t2n(ref_img), run("vae_decoder", {"latents": _t2n(lat)})["image"])
    }
    for g in results.values():
        for metrics in g.values():
            metrics["pass"] = metrics["cosine"] >= COSINE_THRESHOLD
    return results


def end_to_end_parity(
    loaded: LoadedCheckpoint, runtime: MobileORuntime, steps: int = 4, seed: int = 0
) -> dict[str, Any]:
    """Greedy answers (identical ids) and images from the same seed (PSNR): the same requests to the
    reference and the runtime pipelines, each with the model's defaults."""
    reference = ReferencePipeline(loaded.model.float(), loaded.tokenizer, gen_dtype=torch.float32)
    image = test_image(seed=seed + 1)

    def run(pipe: Pipeline) -> tuple[AskResult, ImageResult, ImageResult]:
        return (
            pipe.ask(image, "what colour is the square?", seed=seed),
            pipe.generate("a blue triangle at the top", steps=steps, seed=seed),
            pipe.edit(image, "make the square green", steps=steps, seed=seed),
        )

    (ref_ans, ref_gen, ref_edit), (rt_ans, rt_gen, rt_edit) = run(reference), run(runtime)
    return {
        "answer": {
            "reference": ref_ans.answer,
            "runtime": rt_ans.answer,
            "identical_ids": ref_ans.token_ids == rt_ans.token_ids,
            "num_tokens": ref_ans.num_tokens,
        },
        "generate": {"psnr_db": psnr(ref_gen.image, rt_gen.image), "steps": steps},
        "edit": {"psnr_db": psnr(ref_edit.image, rt_edit.image), "steps": steps},
    }


def parity_report(loaded: LoadedCheckpoint, runtime: MobileORuntime, steps: int = 4) -> dict[str, Any]:
    """Both parts, with an overall pass flag."""
    g = graph_parity(loaded, runtime)
    e = end_to_end_parity(loaded, runtime, steps=steps)
    ok = all(m["pass"] for v in g.values() for m in v.values())
    ok = ok and e["answer"]["identical_ids"] and e["generate"]["psnr_db"] >= PSNR_THRESHOLD_DB
    ok = ok and e["edit"]["psnr_db"] >= PSNR_THRESHOLD_DB
    return {
        "graphs": g,
        "end_to_end": e,
        "pass": bool(ok),
        "thresholds": {"cosine": COSINE_THRESHOLD, "psnr_db": PSNR_THRESHOLD_DB},
    }


@torch.inference_mode()
def random_weight_parity(
    config: str, work_dir: Path, graphs_to_check: list[str] | None = None
) -> dict[str, Any]:
    """Per-graph parity at a named configuration (e.g. ``real-0.5b``) with random weights.

    Each graph is built alone (only its parts), exported to ``work_dir``, and compared with the library
    modules it wraps: transformers' hidden-state capture and logits, diffusers' default SANA processors.
    """
    import gc

    from mobile_o_ros.export.onnx_export import export_graph, graph_specs
    from mobile_o_ros.export.parts import build_parts
    from mobile_o_ros.runtime.ort_backend import OnnxRuntimeBackend

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    names = graphs_to_check or ["vision", "llm", "mcp", "dit", "vae_decoder"]
    results: dict[str, Any] = {}
    for name in names:
        parts = build_parts(config, [name])
        cfg = parts.config
        chunks = graphs.lm_head_chunks_for(int(cfg.llm["vocab_size"]), cfg.hidden_size)
        spec = graph_specs(parts, chunks, names=[name])[0]
        meta = export_graph(spec, work_dir)
        backend = OnnxRuntimeBackend(work_dir, {"graphs": {name: meta}}, graphs=[name])
        results[name] = _compare_graph(name, parts, backend)
        results[name]["_export_seconds"] = meta["export_seconds"]
        del parts, spec, backend
        gc.collect()
    for g in results.values():
        for key, metrics in g.items():
            if not key.startswith("_"):
                metrics["pass"] = metrics["cosine"] >= COSINE_THRESHOLD
    return {
        "config": config,
        "graphs": results,
        "pass": all(m["pass"] for g in results.values() for k, m in g.items() if not k.startswith("_")),
    }


def _compare_graph(name: str, parts, backend) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    cfg = parts.config
    run = backend.run
    if name == "vision":
        pixels = reference_preprocess(test_image(), size=cfg.image_size)
        ref = parts.mm_projector(parts.vision(pixels))
        return {"image_embeds": compare(_t2n(ref), run("vision", {"images": _t2n(pixels)})["image_embeds"])}
    if name == "llm":
        length = 300
        embeds = torch.randn(1, length, cfg.hidden_size, generator=gen) * 0.02
        hs = parts.llm.model(inputs_embeds=embeds, output_hidden_states=True).hidden_states
        m = cfg.llm
        heads = int(m["num_attention_heads"])
        return llm_parity(
            parts.llm,
            run,
            embeds,
            torch.stack(list(hs[-cfg.mcp.num_layers :]), dim=1),
            int(m["num_hidden_layers"]),
            int(m["num_key_value_heads"]),
            cfg.hidden_size // heads,
        )
    if name == "mcp":
        x = torch.randn(2, cfg.mcp.num_layers, 77, cfg.hidden_size, generator=gen)
        x[0] = 0  # the CFG batch: all-zero hidden states first
        return {
            "conditioning": compare(
                _t2n(parts.mcp(x)), run("mcp", {"hidden_states": _t2n(x)})["conditioning"]
            )
        }
    if name == "dit":
        c, h, w = cfg.latent_shape
        cond = torch.randn(2, 77, cfg.mcp.output_dim, generator=gen)
        res = {}
        for t in (999, 136):
            lat = torch.randn(2, c, h, w, generator=gen)
            ref = parts.dit(
                hidden_states=lat,
                encoder_hidden_states=cond,
                timestep=torch.tensor([t, t]),
                return_dict=False,
            )[0]
            feeds = {
                "latents": _t2n(lat),
                "timestep": np.full((2,), float(t), np.float32),
                "encoder_hidden_states": _t2n(cond),
                "encoder_attention_mask": np.ones((2, 77), np.float32),
            }
            res[f"velocity_t{t}"] = compare(_t2n(ref), run("dit", feeds)["velocity"])
        return res
    c, h, w = cfg.latent_shape
    lat = torch.randn(1, c, h, w, generator=gen) / cfg.vae_scaling_factor
    return {
        "image": compare(
            _t2n(parts.vae.decode(lat).sample), run("vae_decoder", {"latents": _t2n(lat)})["image"]
        )
    }
