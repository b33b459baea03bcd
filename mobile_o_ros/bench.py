"""``make bench``: per-component latency and peak memory, torch eager against onnxruntime CPU, and fp32
against int8 onnxruntime (:mod:`mobile_o_ros.bench_int8`).

Each (component, engine) pair runs in its own subprocess so its peak RSS is its own. Real sizes with
random weights by default (``real-0.5b``); ``--quick`` uses the tiny config. Writes ``bench.json`` and
``bench.png`` under the output folder. TensorRT joins when ``tensorrt`` imports and a GPU is present.
A loaded machine is refused, and each row records the load average and CPU model before and after it
(:mod:`mobile_o_ros.bench_load`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

COMPONENTS = ("vision", "llm_prefill", "llm_decode", "mcp", "dit_step", "vae_decode", "generation")
GRAPH_OF = {
    "vision": ["vision"],
    "llm_prefill": ["llm"],
    "llm_decode": ["llm"],
    "mcp": ["mcp"],
    "dit_step": ["dit"],
    "vae_decode": ["vae_decoder"],
    "generation": ["llm", "mcp", "dit", "vae_decoder"],
}
PREFILL_TOKENS = 300
TEXT_TOKENS = 77
GENERATION_STEPS = 4
THREADS = int(os.environ.get("MOBILE_O_BENCH_THREADS", "0")) or os.cpu_count() or 1


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(fn, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _repeats(component: str, quick: bool) -> tuple[int, int]:
    if quick:
        return 1, 2
    return {"vae_decode": (1, 3), "generation": (0, 2), "dit_step": (1, 5), "llm_decode": (3, 20)}.get(
        component, (1, 5)
    )


# ------------------------------------------------------------------------------------------- torch side
def _inputs(ns, component: str) -> dict[str, Any]:
    cfg = ns.config
    rng = np.random.default_rng(0)
    d = cfg.hidden_size
    c, h, w = cfg.latent_shape
    m = cfg.llm
    kv_shape = (
        int(m["num_hidden_layers"]),
        2,
        1,
        int(m["num_key_value_heads"]),
        512,
        d // int(m["num_attention_heads"]),
    )
    return {
        "images": rng.random((1, 3, cfg.image_size, cfg.image_size), dtype=np.float32),
        "prefill": rng.standard_normal((1, PREFILL_TOKENS, d), dtype=np.float32) * 0.02,
        "kv_shape": kv_shape,
        "hidden4": rng.standard_normal((2, cfg.mcp.num_layers, TEXT_TOKENS, d), dtype=np.float32),
        "latents2": rng.standard_normal((2, c, h, w), dtype=np.float32),
        "cond": rng.standard_normal((2, TEXT_TOKENS, cfg.mcp.output_dim), dtype=np.float32),
        "latents1": rng.standard_normal((1, c, h, w), dtype=np.float32),
        "text": rng.standard_normal((1, TEXT_TOKENS, d), dtype=np.float32) * 0.02,
    }


def run_torch(config: str, component: str, quick: bool) -> dict[str, Any]:
    """Time one component in torch eager (the reference modules, fp32, inference mode)."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    torch.set_num_threads(THREADS)
    from mobile_o_ros.export.parts import build_parts

    ns = build_parts(config, GRAPH_OF[component])
    x = _inputs(ns, component)
    t = torch.from_numpy
    warmup, repeats = _repeats(component, quick)

    with torch.inference_mode():
        if component == "vision":
            fn = lambda: ns.mm_projector(ns.vision(t(x["images"])))
        elif component == "llm_prefill":
            fn = lambda: ns.llm(inputs_embeds=t(x["prefill"]), use_cache=True).logits[:, -1]
        elif component == "llm_decode":
            out = ns.llm(inputs_embeds=t(x["prefill"]), use_cache=True)
            past = out.past_key_values
            step = t(x["prefill"][:, :1])

            def fn() -> None:
                ns.llm(inputs_embeds=step, past_key_values=past, use_cache=True)
                past.crop(PREFILL_TOKENS)
        elif component == "mcp":
            fn = lambda: ns.mcp(t(x["hidden4"]))
        elif component == "dit_step":
            fn = lambda: ns.dit(
                hidden_states=t(x["latents2"]),
                encoder_hidden_states=t(x["cond"]),
                timestep=torch.tensor([999, 999]),
                return_dict=False,
            )[0]
        elif component == "vae_decode":
            fn = lambda: ns.vae.decode(t(x["latents1"])).sample
        else:

            def fn() -> None:
                hidden = ns.llm.model(inputs_embeds=t(x["text"]), output_hidden_states=True).hidden_states[
                    -4:
                ]
                stacked = torch.stack(list(hidden), dim=1)
                cond = ns.mcp(torch.cat([torch.zeros_like(stacked), stacked]))
                sched = DPMSolverMultistepScheduler.from_config(ns.config.scheduler)
                sched.set_timesteps(GENERATION_STEPS)
                lat = t(x["latents1"])
                for ts in sched.timesteps:
                    v = ns.dit(
                        hidden_states=torch.cat([lat, lat]),
                        encoder_hidden_states=cond,
                        timestep=ts.expand(2),
                        return_dict=False,
                    )[0]
                    lat = sched.step(v[:1] + 1.5 * (v[1:] - v[:1]), ts, lat, return_dict=False)[0]
                ns.vae.decode(lat / ns.config.vae_scaling_factor)

        times = _timed(fn, warmup, repeats)
    return {
        "median_ms": statistics.median(times),
        "runs_ms": times,
        "peak_rss_mb": _peak_rss_mb(),
        "threads": THREADS,
    }


# ------------------------------------------------------------------------------------------- onnxruntime side
def export_graphs(config: str, graphs_needed: list[str], onnx_dir: Path) -> None:
    """Export the graphs a component needs (random weights), skipping those already there."""
    from mobile_o_ros.export import graphs as g
    from mobile_o_ros.export.onnx_export import export_graph, graph_specs

    todo = [name for name in graphs_needed if not (onnx_dir / f"{name}.onnx").is_file()]
    if not todo:
        return
    onnx_dir.mkdir(parents=True, exist_ok=True)
    from mobile_o_ros.export.parts import build_parts

    ns = build_parts(config, todo)
    chunks = g.lm_head_chunks_for(int(ns.config.llm["vocab_size"]), ns.config.hidden_size)
    for spec in graph_specs(ns, chunks, names=todo):
        export_graph(spec, onnx_dir)


def run_onnxruntime(onnx_dir: Path, config: str, component: str, quick: bool) -> dict[str, Any]:
    """Time one component in onnxruntime CPU (no torch imported in this process)."""
    import onnxruntime as ort

    from mobile_o_ros.model_config import preset
    from mobile_o_ros.runtime.engine import decode_mask
    from mobile_o_ros.runtime.scheduler import FlowDPMSolverScheduler

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = {
        n: ort.InferenceSession(str(onnx_dir / f"{n}.onnx"), opts, providers=["CPUExecutionProvider"])
        for n in GRAPH_OF[component]
    }
    cfg = preset(config)
    ns = SimpleNamespace(config=cfg)
    x = _inputs(ns, component)
    warmup, repeats = _repeats(component, quick)
    run = lambda n, feeds: sessions[n].run(None, feeds)
    if component == "vision":
        fn = lambda: run("vision", {"images": x["images"]})
    elif component in ("llm_prefill", "llm_decode"):
        cap = x["kv_shape"][4]
        pos = np.arange(PREFILL_TOKENS, dtype=np.int64)
        prefill = {
            "inputs_embeds": x["prefill"],
            "position_ids": pos[None],
            "attention_mask": decode_mask(pos, cap),
            "kv_cache": np.zeros(x["kv_shape"], np.float32),
        }
        if component == "llm_prefill":
            fn = lambda: run("llm", prefill)
        else:
            cache = run("llm", prefill)[1]
            last = np.array([PREFILL_TOKENS], dtype=np.int64)
            step = {
                "inputs_embeds": x["prefill"][:, :1],
                "position_ids": last[None],
                "attention_mask": decode_mask(last, cap),
                "kv_cache": cache,
            }
            fn = lambda: run("llm", step)
    elif component == "mcp":
        fn = lambda: run("mcp", {"hidden_states": x["hidden4"]})
    elif component == "dit_step":
        feeds = {
            "latents": x["latents2"],
            "timestep": np.array([999.0, 999.0], np.float32),
            "encoder_hidden_states": x["cond"],
            "encoder_attention_mask": np.ones((2, TEXT_TOKENS), np.float32),
        }
        fn = lambda: run("dit", feeds)
    elif component == "vae_decode":
        fn = lambda: run("vae_decoder", {"latents": x["latents1"]})
    else:
        kv_text = (*x["kv_shape"][:4], TEXT_TOKENS, x["kv_shape"][5])
        pos = np.arange(TEXT_TOKENS, dtype=np.int64)
        text_prefill = {
            "inputs_embeds": x["text"],
            "position_ids": pos[None],
            "attention_mask": decode_mask(pos, TEXT_TOKENS),
            "kv_cache": np.zeros(kv_text, np.float32),
        }

        def fn() -> None:
            stacked = run("llm", text_prefill)[2]
            cond = run("mcp", {"hidden_states": np.concatenate([np.zeros_like(stacked), stacked])})[0]
            sched = FlowDPMSolverScheduler(cfg.scheduler)
            sched.set_timesteps(GENERATION_STEPS)
            lat = x["latents1"]
            mask = np.ones(cond.shape[:2], np.float32)
            for ts in sched.timesteps:
                v = run(
                    "dit",
                    {
                        "latents": np.concatenate([lat, lat]),
                        "timestep": np.full((2,), float(ts), np.float32),
                        "encoder_hidden_states": cond,
                        "encoder_attention_mask": mask,
                    },
                )[0]
                lat = sched.step(v[:1] + np.float32(1.5) * (v[1:] - v[:1]), int(ts), lat)
            run("vae_decoder", {"latents": (lat / np.float32(cfg.vae_scaling_factor)).astype(np.float32)})

    times = _timed(fn, warmup, repeats)
    return {
        "median_ms": statistics.median(times),
        "runs_ms": times,
        "peak_rss_mb": _peak_rss_mb(),
        "threads": THREADS,
        "torch_imported": "torch" in sys.modules,
    }


# ------------------------------------------------------------------------------------------- driver
def _worker(args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``python -m mobile_o_ros.bench ARGS`` (or ``-m MODULE ARGS``) and read its last line as JSON."""
    command = args if args[:1] == ["-m"] else ["-m", "mobile_o_ros.bench", *args]
    proc = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine() -> dict[str, Any]:
    import onnxruntime

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": THREADS,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        import tensorrt  # noqa: F401

        info["tensorrt"] = "present (TensorRT benchmarks: mobile_o_ros.trt)"
    except ImportError:
        info["tensorrt"] = "not installed: TensorRT rows skipped (run make bench on a Jetson / GPU host)"
    return info


def plot(report: dict[str, Any], path: Path) -> None:
    """A bar chart (log scale) of median latency per component and engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["components"])
    engines = ["torch", "onnxruntime"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.38
    for i, engine in enumerate(engines):
        vals = [report["components"][n].get(engine, {}).get("median_ms", np.nan) for n in names]
        bars = ax.bar(np.arange(len(names)) + (i - 0.5) * width, vals, width, label=engine)
        for b, v in zip(bars, vals, strict=False):
            if np.isfinite(v):
                ax.annotate(
                    f"{v:.0f}" if v >= 10 else f"{v:.1f}",
                    (b.get_x() + b.get_width() / 2, v),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_yscale("log")
    ax.set_ylabel("median latency (ms, log)")
    ax.set_title(f"Mobile-O {report['config']} components, CPU ({report['machine']['threads']} threads)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_trt_bench(
    export_dir: Path,
    engine_dir: Path | None = None,
    repeats: int = 5,
    steps: int = 20,
    max_new_tokens: int = 64,
) -> dict[str, Any]:
    """Per-component and whole-task latency (GPU ms from CUDA events, wall ms), memory and power mode.

    Runs where ``tensorrt`` and ``pycuda`` import and engines exist (``mobile-o build-engines``), on the
    production path: ``MobileORuntime`` on ``TensorRTBackend``.
    """
    from mobile_o_ros.runtime.engine import MobileORuntime
    from mobile_o_ros.trt.bench import TARGETS, decode_split, measure, power_mode

    runtime = MobileORuntime.load(export_dir, backend="tensorrt", engine_dir=engine_dir, timing=True)
    backend = runtime.backend
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)

    def median(fn) -> dict[str, float]:
        fn()  # warm-up
        runs = [measure(backend, fn) for _ in range(repeats)]
        return {
            "gpu_ms": statistics.median(r[0] for r in runs),
            "wall_ms": statistics.median(r[1] for r in runs),
        }

    try:
        rows: dict[str, Any] = {
            "vision": median(lambda: runtime.encode_image(image)),
            f"generation_{steps}_steps": median(
                lambda: runtime.generate("a red circle on the left", steps=steps, seed=0)
            ),
            f"edit_{steps}_steps": median(lambda: runtime.edit(image, "make it blue", steps=steps, seed=0)),
        }
        first: list[float] = []
        runtime.ask(image, "what is in the picture?", max_new_tokens=1)
        for _ in range(repeats):
            t0 = time.perf_counter()
            runtime.ask(image, "what is in the picture?", max_new_tokens=1)
            first.append((time.perf_counter() - t0) * 1000)
        backend.timings(reset=True)
        t0 = time.perf_counter()
        res = runtime.ask(image, "describe the picture in detail.", max_new_tokens=max_new_tokens)
        decode_s = time.perf_counter() - t0 - statistics.median(first) / 1000
        timings = backend.timings(reset=True)
        rows["first_token_ms"] = statistics.median(first)
        rows["decode_tokens_per_s"] = (
            (res.num_tokens - 1) / decode_s if res.num_tokens > 1 and decode_s > 0 else None
        )
        rows["decode_split"] = decode_split(timings)
        free_after, total = backend.memory_info()
        return {
            "backend": backend.describe(),
            "rows": rows,
            # device memory in use after all engines ran (on a Jetson this is shared with the CPU)
            "gpu_memory_gb": (total - free_after) / 2**30,
            "power": power_mode(),
            "targets": TARGETS,
        }
    finally:
        runtime.close()


def _tensorrt_rows(tensorrt_export: Path | None) -> dict[str, Any]:
    try:
        import pycuda.driver  # noqa: F401
        import tensorrt  # noqa: F401
    except ImportError as err:
        return {
            "skipped": f"TensorRT/pycuda not importable here ({err}); run make bench on a Jetson or GPU host"
        }
    if tensorrt_export is None:
        return {"skipped": "give --tensorrt-export EXPORT_DIR (engines built with mobile-o build-engines)"}
    return run_trt_bench(Path(tensorrt_export))


#: The bench's sections in run order (``--sections`` picks some): ``components`` (torch eager against
#: onnxruntime CPU per component), ``int8`` (fp32 against int8 onnxruntime,
#: :mod:`mobile_o_ros.bench_int8`), ``annotate`` (frames/s with five questions per frame, seen once against
#: one ask per question, :mod:`mobile_o_ros.bench_annotate`) and ``ttft`` (time to first token of a question
#: about a frame, cold against warm, :mod:`mobile_o_ros.bench_ttft`).
SECTIONS = ("components", "int8", "annotate", "ttft")


def _components_section(
    config: str, onnx_dir: Path, components: list[str], timeout: float, loaded: bool
) -> dict[str, Any]:
    """torch eager against onnxruntime CPU per component, each row with the machine before and after."""
    from mobile_o_ros.bench_load import mark, snapshot

    rows: dict[str, Any] = {}
    for comp in components:
        before = snapshot()
        t0 = time.perf_counter()
        exp = _worker(["--export", config, comp, str(onnx_dir)], timeout)
        row: dict[str, Any] = {}
        if "error" in exp:
            row["error"] = f"export failed: {exp['error']}"
        else:
            row["torch"] = _worker(["--torch", config, comp], timeout)
            row["onnxruntime"] = _worker(["--onnxruntime", config, comp, str(onnx_dir)], timeout)
            t, o = row["torch"].get("median_ms"), row["onnxruntime"].get("median_ms")
            if t and o:
                row["speedup_onnxruntime_vs_torch"] = round(t / o, 3)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows[comp] = mark(row, before, snapshot(), loaded)
        t = row.get("torch", {}).get("median_ms")
        o = row.get("onnxruntime", {}).get("median_ms")
        print(
            f"{comp:<12} torch {t if t is None else f'{t:10.1f}'} ms   onnxruntime "
            f"{o if o is None else f'{o:10.1f}'} ms   {row.get('error', '')}",
            flush=True,
        )
    return rows


def _int8_section(config: str, onnx_dir: Path, quick: bool, loaded: bool) -> dict[str, Any]:
    """fp32 against int8 onnxruntime CPU per graph and end to end (:mod:`mobile_o_ros.bench_int8`)."""
    from mobile_o_ros.bench_int8 import GRAPHS, int8_section
    from mobile_o_ros.bench_load import mark, snapshot

    component_of = {"vision": "vision", "llm": "llm_prefill", "mcp": "mcp", "dit": "dit_step"}
    component_of["vae_decoder"] = "vae_decode"

    def export(graphs: list[str]) -> str | None:
        for graph in graphs:
            out = _worker(["--export", config, component_of[graph], str(onnx_dir)], 3600)
            if "error" in out:
                return out["error"]
        return None

    before = snapshot()
    section = int8_section(config, onnx_dir, quick, export, GRAPHS)
    for rows in (
        section.get("rows", {}),
        section.get("graphs", {}),
        section.get("end_to_end", {}).get("rows", {}),
    ):
        for row in rows.values():
            row["loaded"] = loaded
    return mark(section, before, snapshot(), loaded)


def run_bench(
    out_dir: Path,
    quick: bool = False,
    components: list[str] | None = None,
    tensorrt_export: Path | None = None,
    sections: list[str] | None = None,
    allow_loaded: bool = False,
    load: Any = None,
) -> int:
    """Run the chosen sections (default all of :data:`SECTIONS`) and write ``bench.json``, its tables in
    ``bench.md`` (:mod:`mobile_o_ros.bench_tables`) and, for the components, ``bench.png``; returns 0.

    Refuses to start on a loaded machine (:func:`mobile_o_ros.bench_load.check_machine`: a CliError, exit 2)
    unless ``allow_loaded``, which marks every row ``loaded``. ``load``: the load-average source (default
    ``os.getloadavg``).
    """
    from mobile_o_ros.bench_load import check_machine, snapshot

    chosen = sections or list(SECTIONS)
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        from mobile_o_ros.errors import CliError

        raise CliError(f"unknown bench sections {', '.join(unknown)} (choose from {', '.join(SECTIONS)})")
    load = load or os.getloadavg
    at_start = check_machine(allow_loaded, load)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = "tiny" if quick else "real-0.5b"
    onnx_dir = out_dir / "onnx" / config
    report: dict[str, Any] = {
        "config": config,
        "machine": {**_machine(), **snapshot(load)},
        "load_check": {
            "at_start": at_start,
            "allow_loaded": allow_loaded,
            "rows_marked_loaded": allow_loaded,
        },
        "sections": chosen,
        "settings": {
            "prefill_tokens": PREFILL_TOKENS,
            "text_tokens": TEXT_TOKENS,
            "generation_steps": GENERATION_STEPS,
            "dit_batch": 2,
            "method": "median wall time after warm-up, one subprocess per row",
        },
    }
    timeout = 600 if quick else 3600
    if "components" in chosen:
        report["components"] = _components_section(
            config, onnx_dir, components or list(COMPONENTS), timeout, allow_loaded
        )
    if "int8" in chosen:
        report["int8"] = _int8_section(config, onnx_dir, quick, allow_loaded)
    from mobile_o_ros.bench_annotate import annotate_section
    from mobile_o_ros.bench_load import mark
    from mobile_o_ros.bench_ttft import ttft_section

    for name, section in (("annotate", annotate_section), ("ttft", ttft_section)):
        if name in chosen:  # each row in a subprocess of the section's module
            before = snapshot(load)
            worker = lambda args, module=section.__module__: _worker(["-m", module, *args], timeout)
            rows = section(out_dir / "onnx", quick, THREADS, worker)
            report[name] = mark(rows, before, snapshot(load), allow_loaded)
    report["tensorrt"] = _tensorrt_rows(tensorrt_export)
    print(f"tensorrt: {report['tensorrt'].get('skipped', 'measured')}")
    report["machine_after"] = snapshot(load)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    from mobile_o_ros.bench_tables import markdown

    (out_dir / "bench.md").write_text(markdown(report))
    if report.get("components"):
        plot(report, out_dir / "bench.png")
    print(
        f"wrote {out_dir / 'bench.json'}, {out_dir / 'bench.md'}"
        + (f" and {out_dir / 'bench.png'}" if report.get("components") else "")
    )
    return 0


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mobile_o_ros.bench")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--torch", nargs=2, metavar=("CONFIG", "COMPONENT"))
    mode.add_argument("--onnxruntime", nargs=3, metavar=("CONFIG", "COMPONENT", "ONNX_DIR"))
    mode.add_argument("--export", nargs=3, metavar=("CONFIG", "COMPONENT", "ONNX_DIR"))
    args = parser.parse_args(argv)
    if args.torch:
        config, comp = args.torch
        result = run_torch(config, comp, quick=config == "tiny")
    elif args.onnxruntime:
        config, comp, onnx_dir = args.onnxruntime
        result = run_onnxruntime(Path(onnx_dir), config, comp, quick=config == "tiny")
    else:
        config, comp, onnx_dir = args.export
        export_graphs(config, GRAPH_OF[comp], Path(onnx_dir))
        result = {"exported": GRAPH_OF[comp]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
