"""The int8 rows of ``make bench``: fp32 against int8 onnxruntime CPU, per graph and end to end.

Random weights at the bench's configuration (``real-0.5b``; ``tiny`` with ``--quick``). Each graph is
quantized as ``mobile-o export --quantize int8`` does (:mod:`mobile_o_ros.export.quantize`: a QDQ and a
dynamic candidate, the better one kept when it holds its cosine and pays), calibrated on synthetic inputs of
the pipeline's shapes (shapes-world renders for the vision tower, random embeddings, latents and conditioning
elsewhere), and timed against its fp32 graph back to back in one process (:func:`~mobile_o_ros.export.
quantize.compare`). Rows: vision, LLM prefill, decode per token, MCP, DiT step, VAE; then a whole image and a
whole scene question against all fp32, with every graph as the export would choose it (``chosen``) and with
each graph's fastest candidate where it beats fp32, whatever its cosine (``fastest``).

Each graph runs in its own subprocess (``python -m mobile_o_ros.bench_int8``), so its memory is its own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

GRAPHS = ("vision", "llm", "mcp", "dit", "vae_decoder")
#: The bench's row names for each graph's call kinds.
ROWS = {
    ("vision", "call"): "vision",
    ("llm", "prefill"): "llm_prefill",
    ("llm", "decode"): "llm_decode",
    ("mcp", "call"): "mcp",
    ("dit", "call"): "dit_step",
    ("vae_decoder", "call"): "vae_decode",
}
PREFILL_TOKENS = 300
TEXT_TOKENS = 77
DECODE_CAPACITY = 512
QUESTION_TOKENS = 16
#: Steps of the whole-image row (the model's default).
IMAGE_STEPS = 20
#: The DiT's inputs spread over this timestep range (first and last included).
DIT_TIMESTEPS = (999.0, 50.0)
Feeds = dict[str, np.ndarray]


# ------------------------------------------------------------------------------------------- inputs
def _kv_shape(cfg: Any, capacity: int) -> tuple[int, ...]:
    m = cfg.llm
    heads = int(m["num_attention_heads"])
    return (
        int(m["num_hidden_layers"]),
        2,
        1,
        int(m["num_key_value_heads"]),
        capacity,
        cfg.hidden_size // heads,
    )


def _prefill(cfg: Any, rng: np.random.Generator, tokens: int, capacity: int) -> Feeds:
    from mobile_o_ros.runtime.engine import decode_mask

    pos = np.arange(tokens, dtype=np.int64)
    return {
        "inputs_embeds": (rng.standard_normal((1, tokens, cfg.hidden_size)) * 0.02).astype(np.float32),
        "position_ids": pos[None],
        "attention_mask": decode_mask(pos, capacity),
        "kv_cache": np.zeros(_kv_shape(cfg, capacity), np.float32),
    }


def _decode(cfg: Any, rng: np.random.Generator, position: int, cache: np.ndarray) -> Feeds:
    from mobile_o_ros.runtime.engine import decode_mask

    pos = np.array([position], dtype=np.int64)
    return {
        "inputs_embeds": (rng.standard_normal((1, 1, cfg.hidden_size)) * 0.02).astype(np.float32),
        "position_ids": pos[None],
        "attention_mask": decode_mask(pos, cache.shape[4]),
        "kv_cache": cache,
    }


def synthetic_feeds(config: str, graph: str, fp32_path: Path, count: int = 4, seed: int = 0) -> list[Feeds]:
    """Calibration and timing inputs of ``graph`` at ``config``, in the shapes the pipeline feeds it.

    The ``llm`` graph gets prefills (``PREFILL_TOKENS`` into a ``DECODE_CAPACITY`` cache, and a caption of
    ``TEXT_TOKENS``) and decode steps on the caches the fp32 graph wrote; the DiT gets CFG batches at
    ``count`` timesteps from 999 to 50.
    """
    from mobile_o_ros.model_config import preset

    cfg = preset(config)
    rng = np.random.default_rng(seed)
    c, h, w = cfg.latent_shape
    if graph == "vision":
        from mobile_o_ros.runtime.preprocess import preprocess_image
        from mobile_o_ros.shapes import world

        scenes = world.make_scenes("train", count, start=60_000)
        return [{"images": preprocess_image(world.render(s, 512), cfg.image_size)} for s in scenes]
    if graph == "llm":
        from mobile_o_ros.export.quantize import _session

        session = _session(fp32_path)
        feeds: list[Feeds] = []
        for _ in range(max(1, count // 2)):
            prefill = _prefill(cfg, rng, PREFILL_TOKENS, DECODE_CAPACITY)
            feeds.append(prefill)
            cache = session.run(["kv_cache_out"], prefill)[0]
            feeds.append(_decode(cfg, rng, PREFILL_TOKENS, cache))
        feeds.append(_prefill(cfg, rng, TEXT_TOKENS, TEXT_TOKENS))
        return feeds
    if graph == "mcp":
        out = []
        for _ in range(count):
            x = rng.standard_normal((2, cfg.mcp.num_layers, TEXT_TOKENS, cfg.hidden_size)).astype(np.float32)
            x[0] = 0.0  # the CFG batch: all-zero hidden states first
            out.append({"hidden_states": x})
        return out
    if graph == "dit":
        return [
            {
                "latents": rng.standard_normal((2, c, h, w)).astype(np.float32),
                "timestep": np.full((2,), t, np.float32),
                "encoder_hidden_states": rng.standard_normal((2, TEXT_TOKENS, cfg.mcp.output_dim)).astype(
                    np.float32
                ),
                "encoder_attention_mask": np.ones((2, TEXT_TOKENS), np.float32),
            }
            for t in np.linspace(DIT_TIMESTEPS[0], DIT_TIMESTEPS[-1], max(count, 2)).round()
        ]
    if graph == "vae_decoder":
        scale = np.float32(cfg.vae_scaling_factor)
        return [
            {"latents": (rng.standard_normal((1, c, h, w)).astype(np.float32) / scale)} for _ in range(count)
        ]
    raise ValueError(f"unknown graph {graph!r}")


# ------------------------------------------------------------------------------------------- per graph
def graph_row(config: str, graph: str, onnx_dir: Path, quick: bool) -> dict[str, Any]:
    """Quantize one graph (both modes), measure each against fp32 and choose, as the export does."""
    from mobile_o_ros.bench_load import snapshot
    from mobile_o_ros.export.quantize import quantize_graph_modes

    before = snapshot()
    fp32 = onnx_dir / f"{graph}.onnx"
    int8_dir = onnx_dir / "int8"
    int8_dir.mkdir(parents=True, exist_ok=True)
    feeds = synthetic_feeds(config, graph, fp32, count=2 if quick else 4)
    decision, kept = quantize_graph_modes(
        fp32, int8_dir, graph, feeds, log=lambda s: None, keep_candidates=True
    )
    decision["file"] = str(kept.relative_to(onnx_dir)) if kept else f"{graph}.onnx"
    fastest = max(decision["candidates"].items(), key=lambda mc: mc[1]["speedup"], default=None)
    decision["fastest_file"] = (
        f"int8/{fastest[1]['file']}" if fastest and fastest[1]["speedup"] > 1.0 else f"{graph}.onnx"
    )
    return {**decision, "machine_before": before, "machine_after": snapshot()}


# ------------------------------------------------------------------------------------------- end to end
def _sessions(onnx_dir: Path, files: dict[str, str]) -> dict[str, Any]:
    from mobile_o_ros.export.quantize import _session

    return {g: _session(onnx_dir / f) for g, f in files.items()}


def whole_image(sessions: dict[str, Any], config: str, steps: int) -> None:
    """Text prefill, MCP, ``steps`` CFG DiT steps with the flow DPM-Solver, VAE (random conditioning)."""
    from mobile_o_ros.model_config import preset
    from mobile_o_ros.runtime.scheduler import FlowDPMSolverScheduler

    cfg = preset(config)
    rng = np.random.default_rng(1)
    prefill = _prefill(cfg, rng, TEXT_TOKENS, TEXT_TOKENS)
    stacked = sessions["llm"].run(["mcp_inputs"], prefill)[0]
    cond = sessions["mcp"].run(None, {"hidden_states": np.concatenate([np.zeros_like(stacked), stacked])})[0]
    sched = FlowDPMSolverScheduler(cfg.scheduler)
    sched.set_timesteps(steps)
    lat = rng.standard_normal((1, *cfg.latent_shape)).astype(np.float32)
    mask = np.ones(cond.shape[:2], np.float32)
    for t in sched.timesteps:
        feeds = {
            "latents": np.concatenate([lat, lat]),
            "timestep": np.full((2,), float(t), np.float32),
            "encoder_hidden_states": cond,
            "encoder_attention_mask": mask,
        }
        v = sessions["dit"].run(None, feeds)[0]
        lat = sched.step(v[:1] + np.float32(1.5) * (v[1:] - v[:1]), int(t), lat)
    sessions["vae_decoder"].run(
        None, {"latents": (lat / np.float32(cfg.vae_scaling_factor)).astype(np.float32)}
    )


def scene_question(sessions: dict[str, Any], config: str, new_tokens: int = QUESTION_TOKENS) -> None:
    """Vision, a prefill of the image tokens and a prompt (``PREFILL_TOKENS`` in all), ``new_tokens`` greedy
    decode steps."""
    from mobile_o_ros.model_config import preset
    from mobile_o_ros.runtime.engine import decode_mask
    from mobile_o_ros.runtime.preprocess import preprocess_image
    from mobile_o_ros.shapes import world

    cfg = preset(config)
    rng = np.random.default_rng(2)
    image = preprocess_image(world.render(world.make_scene(60_100), 512), cfg.image_size)
    tokens = sessions["vision"].run(None, {"images": image})[0]
    n_text = max(1, PREFILL_TOKENS - tokens.shape[1])
    text = (rng.standard_normal((1, n_text, cfg.hidden_size)) * 0.02).astype(np.float32)
    embeds = np.concatenate([tokens, text], axis=1).astype(np.float32)
    capacity = int(np.ceil((embeds.shape[1] + new_tokens) / 64) * 64)
    cache = np.zeros(_kv_shape(cfg, capacity), np.float32)
    pos = np.arange(embeds.shape[1], dtype=np.int64)
    step = embeds
    for _ in range(new_tokens):
        feeds = {
            "inputs_embeds": step,
            "position_ids": pos[None],
            "attention_mask": decode_mask(pos, capacity),
            "kv_cache": cache,
        }
        logits, cache = sessions["llm"].run(["logits", "kv_cache_out"], feeds)
        token = int(np.argmax(logits[0]))
        step = (np.sin(np.arange(cfg.hidden_size) * (token + 1)) * 0.02).astype(np.float32)[None, None]
        pos = np.array([pos[-1] + 1], dtype=np.int64)


def end_to_end(
    config: str, onnx_dir: Path, variants: dict[str, dict[str, str]], quick: bool
) -> dict[str, Any]:
    """The whole image and the whole scene question: all fp32 against each variant's files (graph → file
    under ``onnx_dir``), one after the other in this process."""
    from mobile_o_ros.bench_load import snapshot

    before = snapshot()
    steps = 2 if quick else IMAGE_STEPS
    repeats = 2 if quick else 1
    rows: dict[str, Any] = {}
    for row, fn in (
        (f"image_{steps}_steps", lambda s: whole_image(s, config, steps)),
        ("scene_question", lambda s: scene_question(s, config)),
    ):
        needed = ("llm", "mcp", "dit", "vae_decoder") if row.startswith("image") else ("vision", "llm")
        medians: dict[str, float] = {}
        for label, files in {"fp32": {g: f"{g}.onnx" for g in GRAPHS}, **variants}.items():
            sessions = _sessions(onnx_dir, {g: files[g] for g in needed})
            fn(sessions)  # warm-up
            runs = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn(sessions)
                runs.append((time.perf_counter() - t0) * 1000)
            del sessions
            medians[label] = statistics.median(runs)
        f = medians["fp32"]
        rows[row] = {
            label: {"fp32_ms": round(f, 1), "int8_ms": round(m, 1), "speedup": round(f / m, 3)}
            for label, m in medians.items()
            if label != "fp32"
        }
    return {"rows": rows, "files": variants, "machine_before": before, "machine_after": snapshot()}


# ------------------------------------------------------------------------------------------- driver
def _worker(args: list[str], timeout: float) -> dict[str, Any]:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "mobile_o_ros.bench_int8", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _line(row: str, mode: str, t: dict[str, Any], chosen: str) -> str:
    cos = f"  cosine {t['cosine']:.4f}" if "cosine" in t else ""
    mark = " (kept)" if mode == chosen else ""
    return (
        f"int8 {row:<16} {mode:<13} fp32 {t['fp32_ms']:10.1f} ms  int8 {t['int8_ms']:10.1f} ms  "
        f"{t['speedup']:.2f}x{cos}{mark}"
    )


def int8_section(
    config: str, onnx_dir: Path, quick: bool, export: Any, graphs: tuple[str, ...] = GRAPHS
) -> dict[str, Any]:
    """The ``int8`` section of bench.json: per-graph decisions and rows, then the end-to-end rows.

    ``export(graphs)`` writes the fp32 graphs into ``onnx_dir`` (the bench's exporter); returns the
    section, printing one line per row.
    """
    timeout = 900 if quick else 7200
    err = export(list(graphs))
    if err:
        return {"error": f"export failed: {err}"}
    per_graph: dict[str, Any] = {}
    rows: dict[str, Any] = {}
    for graph in graphs:
        result = _worker(["--graph", config, graph, str(onnx_dir), *(["--quick"] if quick else [])], timeout)
        per_graph[graph] = result
        if "error" in result:
            print(f"int8 {graph:<12} error: {result['error']}", flush=True)
            continue
        for mode, cand in result.get("candidates", {}).items():
            for kind, t in cand["timing"].items():
                row = rows.setdefault(ROWS[(graph, kind)], {})
                row[mode] = {**t, "cosine": cand["cosine"]}
                row["chosen"] = result["mode"]
        for kind in ("call", "prefill", "decode"):
            name = ROWS.get((graph, kind))
            if name in rows:
                for mode, t in rows[name].items():
                    if mode != "chosen":
                        print(_line(name, mode, t, result["mode"]), flush=True)
    section: dict[str, Any] = {"graphs": per_graph, "rows": rows}
    if len(graphs) == len(GRAPHS) and all("error" not in r for r in per_graph.values()):
        variants = {
            "chosen": {g: r["file"] for g, r in per_graph.items()},
            "fastest": {g: r["fastest_file"] for g, r in per_graph.items()},
        }
        e2e = _worker(
            ["--end-to-end", config, str(onnx_dir), json.dumps(variants), *(["--quick"] if quick else [])],
            timeout,
        )
        section["end_to_end"] = e2e
        for row, by_variant in e2e.get("rows", {}).items():
            for variant, r in by_variant.items():
                print(_line(row, variant, r, ""), flush=True)
    return section


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mobile_o_ros.bench_int8")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--graph", nargs=3, metavar=("CONFIG", "GRAPH", "ONNX_DIR"))
    mode.add_argument("--end-to-end", nargs=3, metavar=("CONFIG", "ONNX_DIR", "FILES_JSON"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.graph:
        config, graph, onnx_dir = args.graph
        result = graph_row(config, graph, Path(onnx_dir), args.quick)
    else:
        config, onnx_dir, files = args.end_to_end
        result = end_to_end(config, Path(onnx_dir), json.loads(files), args.quick)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
