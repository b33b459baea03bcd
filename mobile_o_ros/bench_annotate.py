"""``make bench``'s ``annotate`` section: frames per second with five questions per frame, each frame seen
once (:meth:`~mobile_o_ros.runtime.engine.MobileORuntime.frame` + ``ask_about``) against one independent
``ask`` per question, on the embedded shapes model and on the real 0.5B configuration with random weights.

Both ways run the same pictures and questions with greedy decoding, and the report says whether every
answer's tokens were the same. Random weights never end an answer early, so each answer is held to
:data:`ANSWER_TOKENS` tokens on every model (a one-word answer and the end of the turn); the embedded model
ends its answers itself within that. Each row runs in its own process (``python -m
mobile_o_ros.bench_annotate``). The real-size row exports the vision and LLM graphs with random weights once
under the bench folder, with a random embedding table and the shapes model's tokenizer padded to the real
vocabulary (questions then take about as many tokens as in Qwen2's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: The questions of a frame: the field bag's tasks (caption and four typed questions).
QUESTIONS = (
    "describe the image.",
    "is there a red triangle?",
    "what shape is in the centre?",
    "how many shapes are there?",
    "what colour is the background?",
)
#: Tokens per answer.
ANSWER_TOKENS = 2
#: The rows of this section and of ``ttft``: the embedded model, real size, and tiny (``--quick``).
ROWS = ("embedded", "real-0.5b", "tiny")
#: Frames per way, per row.
FRAMES = {"real-0.5b": 2, "embedded": 16, "tiny": 2}


def pictures(n: int) -> list[np.ndarray]:
    """Field-bag stations, rendered as the field cameras see them."""
    import random

    from mobile_o_ros.annotate.fieldbag import SIZE, station
    from mobile_o_ros.shapes import world

    rng = random.Random("bench")
    return [world.render(station(rng), SIZE) for _ in range(n)]


def measure(rt: Any, frames: int, threads: int) -> dict[str, Any]:
    """Both ways over ``frames`` pictures (one warm-up frame each first); frames/s, and whether every answer
    was the same."""
    shots = pictures(frames + 1)
    options = {"max_new_tokens": ANSWER_TOKENS, "temperature": 0.0, "seed": 0}
    rt.ask(shots[0], QUESTIONS[0], **options)
    rt.ask_about(rt.frame(shots[0]), QUESTIONS[0], **options)
    t0 = time.perf_counter()
    independent = [[rt.ask(p, q, **options).token_ids for q in QUESTIONS] for p in shots[1:]]
    t_independent = time.perf_counter() - t0
    t0 = time.perf_counter()
    shared = []
    for p in shots[1:]:
        frame = rt.frame(p)
        shared.append([rt.ask_about(frame, q, **options).token_ids for q in QUESTIONS])
    t_shared = time.perf_counter() - t0
    return {
        "frames": frames,
        "questions_per_frame": len(QUESTIONS),
        "answer_tokens_max": ANSWER_TOKENS,
        "threads": threads,
        "independent_frames_per_s": round(frames / t_independent, 4),
        "shared_frames_per_s": round(frames / t_shared, 4),
        "independent_s_per_frame": round(t_independent / frames, 3),
        "shared_s_per_frame": round(t_shared / frames, 3),
        "speedup": round(t_independent / t_shared, 2),
        "answers_identical": independent == shared,
    }


def random_runtime_export(config: str, out: Path) -> Path:
    """The vision and LLM graphs of ``config`` with random weights, plus what the runtime reads beside them
    (manifest, the shapes tokenizer, a random fp16 embedding table); made once. Needs torch."""
    if (out / "manifest.json").is_file():
        return out
    from tokenizers import AddedToken, Tokenizer

    from mobile_o_ros.export import graphs as graph_wrappers
    from mobile_o_ros.export.onnx_export import MANIFEST_VERSION, export_graph, graph_specs, model_section
    from mobile_o_ros.export.parts import build_parts
    from mobile_o_ros.model_config import Defaults
    from mobile_o_ros.model_store import embedded_model_dir
    from mobile_o_ros.runtime.tokenizer import TextTokenizer

    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    metas: dict[str, Any] = {}
    cfg: Any = None
    chunks = 1
    for name in ("vision", "llm"):
        parts = build_parts(config, [name])
        cfg = parts.config
        chunks = graph_wrappers.lm_head_chunks_for(int(cfg.llm["vocab_size"]), cfg.hidden_size)
        metas[name] = export_graph(graph_specs(parts, chunks, names=[name])[0], work)
        del parts
    rows, width = int(cfg.llm["vocab_size"]), cfg.hidden_size
    # The shapes tokenizer (questions take about as many tokens as in Qwen2's), padded with placeholder
    # tokens to the real vocabulary, so every token random weights pick decodes.
    shapes = Tokenizer.from_file(str(embedded_model_dir() / "tokenizer.json"))
    have = shapes.get_vocab_size(with_added_tokens=True)
    shapes.add_tokens([AddedToken(f"<|random{i}|>", normalized=False) for i in range(max(0, rows - have))])
    shapes.save(str(work / "tokenizer.json"))
    tokenizer = TextTokenizer.from_file(work / "tokenizer.json")
    table = np.lib.format.open_memmap(
        work / "embed_tokens.npy", mode="w+", dtype=np.float16, shape=(rows, width)
    )
    rng = np.random.default_rng(0)
    for start in range(0, rows, 8192):
        stop = min(rows, start + 8192)
        table[start:stop] = (rng.standard_normal((stop - start, width)) * 0.02).astype(np.float16)
    table.flush()
    del table
    manifest = {
        "format": "mobile_o_ros.export",
        "version": MANIFEST_VERSION,
        "source_checkpoint": {"path": f"random:{config}", "sha256": None},
        "model": model_section(cfg, chunks),
        "image": {"size": cfg.image_size, "num_tokens": cfg.num_image_tokens},
        "graphs": metas,
        "special_tokens": {"eos": tokenizer.eos_id},
        "defaults": Defaults().__dict__,
        "scheduler": cfg.scheduler,
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return out


def row_runtime(row: str, work_dir: Path, threads: int) -> tuple[Any, str]:
    """The runtime of a bench row and its description: ``embedded`` (the shapes model's export),
    ``real-0.5b`` or ``tiny`` (random weights, vision + LLM graphs exported once under ``work_dir``)."""
    from mobile_o_ros.runtime.engine import MobileORuntime
    from mobile_o_ros.runtime.ort_backend import OnnxRuntimeBackend

    options = {"intra_op_num_threads": threads}
    if row == "embedded":
        from mobile_o_ros import model_store

        return MobileORuntime.load(model_store.export_of(None), **options), "embedded shapes model"
    export = random_runtime_export(row, work_dir / f"annotate-{row}")
    manifest = json.loads((export / "manifest.json").read_text())
    rt = MobileORuntime(export, manifest, OnnxRuntimeBackend(export, manifest, **options))
    return rt, f"{row}, random weights (vision + LLM graphs)"


def run_row(row: str, work_dir: Path, threads: int) -> dict[str, Any]:
    """One row: ``embedded`` (the shapes model's export), ``real-0.5b`` or ``tiny`` (random weights)."""
    rt, model = row_runtime(row, work_dir, threads)
    result = measure(rt, FRAMES[row], threads)
    return {"model": model, "image_size": rt.image_size, **result}


def run_section(
    name: str, work_dir: Path, quick: bool, threads: int, worker: Any, line: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """The rows of a section of this kind (``annotate``, ``ttft``): the embedded model, then ``real-0.5b``
    (``tiny`` with ``quick``), each from ``worker(args)`` (a subprocess running :func:`row_main`), printed
    as ``line(row)`` or its error."""
    rows = {}
    for row in ("embedded", "tiny" if quick else "real-0.5b"):
        result = worker(["--row", row, str(work_dir), str(threads)])
        rows[row] = result
        print(f"{name} {row:<10} {result['error'] if 'error' in result else line(result)}", flush=True)
    return rows


def row_main(prog: str, run: Callable[[str, Path, int], dict[str, Any]], argv: list[str]) -> int:
    """A row's subprocess: ``--row ROW WORK_DIR THREADS``; prints ``run``'s row as one JSON line."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--row", required=True, choices=ROWS)
    parser.add_argument("work_dir")
    parser.add_argument("threads", type=int)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.row, Path(args.work_dir), args.threads)))
    return 0


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['independent_frames_per_s']:.3f} -> {row['shared_frames_per_s']:.3f} frames/s with "
        f"{len(QUESTIONS)} questions ({row['speedup']}x; answers identical: {row['answers_identical']})"
    )


def annotate_section(work_dir: Path, quick: bool, threads: int, worker: Any) -> dict[str, Any]:
    """The section's rows, each from ``worker(args)`` (a subprocess of this module)."""
    return run_section("annotate", work_dir, quick, threads, worker, _line)


if __name__ == "__main__":
    raise SystemExit(row_main("python -m mobile_o_ros.bench_annotate", run_row, sys.argv[1:]))
