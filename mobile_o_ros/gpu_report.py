"""``mobile-o gpu-report`` (``make gpu-first-run``): what the first GPU with TensorRT must answer, in order,
in one JSON + Markdown report.

1. ``parity``: every graph's engine against onnxruntime (fp32 and fp16 builds): cosine, max abs error,
   inf/NaN; the LLM's prefill and decode-step logits included.
2. ``fp32_layers``: the engine inspector's layers against the precision policy: which pinned nodes really
   run in fp32, which run in half precision, which are hidden inside Myelin foreign nodes.
3. ``dit_buckets``: DiT text lengths in buckets 64 → 128 → 64, with and without CUDA graphs, against a plain
   run and onnxruntime.
4. ``rope``: inf/NaN and the LLM's error at positions above 500, fp32 engines built with TF32 on and off.
5. ``memory``: per engine (file, activation scratch, ONNX weights) and all engines loaded (free device memory
   before and after).
6. ``decode_split``: a decode step's time split into host-to-device copies, enqueue and device-to-host
   copies (CUDA events on the backend's stream).
7. ``jetson``: ``nvpmodel -q``, CMA from ``/proc/meminfo``, and an ``llm`` build with ``--lm-head-chunks 1``.

Every step that needs what this machine lacks (TensorRT, pycuda, a CUDA GPU, a Jetson) says so and is
skipped; the others run. With the tiny export (the default) it takes minutes on a desktop GPU; ``--export``
takes any export folder (the real model's takes longer). The module drives engines through the runtime
and the TensorRT tier, above both; :func:`add_parser` registers the verb on the ``mobile-o`` parser.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mobile_o_ros.errors import EXIT_FAILURE, CliError
from mobile_o_ros.manifest import ManifestError, load_manifest
from mobile_o_ros.trt.profiles import TARGETS

STEPS = ("parity", "fp32_layers", "dit_buckets", "rope", "memory", "decode_split", "jetson")
TITLES = {
    "parity": "1. Engines against onnxruntime (fp32, fp16)",
    "fp32_layers": "2. Layers that really run in fp32 (engine inspector) against the policy",
    "dit_buckets": "3. DiT buckets 64 → 128 → 64, with and without CUDA graphs",
    "rope": "4. inf/NaN and error at positions above 500, TF32 on and off",
    "memory": "5. Memory per engine and all engines loaded",
    "decode_split": "6. Decode step: copies and enqueue",
    "jetson": "7. Jetson: power mode, CMA, a one-chunk LM head build",
}
Log = Callable[[str], None]


class Skip(Exception):
    """A step that cannot run here; the message says what it needs."""


# --------------------------------------------------------------------------------------------- environment
def gpu_status() -> tuple[bool, str]:
    """(usable, description): TensorRT and pycuda import and a CUDA device answers."""
    from mobile_o_ros.trt import cache

    try:
        import pycuda.driver  # noqa: F401
        import tensorrt as trt
    except ImportError as err:
        return False, f"needs TensorRT and pycuda ({err})"
    try:
        name, cc = cache.gpu_identity()
    except cache.EngineCacheError as err:
        return False, f"needs a CUDA GPU ({err})"
    return True, f"TensorRT {trt.__version__} on {name} (sm {cc})"


def is_jetson() -> bool:
    """Whether this is a Jetson (an L4T release file)."""
    from mobile_o_ros.trt import cache

    return cache.L4T_RELEASE_FILE.is_file()


def cma_from_meminfo(text: str) -> dict[str, int]:
    """``CmaTotal``/``CmaFree`` of ``/proc/meminfo`` in bytes (empty when the kernel has no CMA)."""
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("CmaTotal", "CmaFree"):
            out[key] = int(rest.split()[0]) * 1024
    return out


# --------------------------------------------------------------------------------------------- metrics
def compare(ref: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    """Cosine, max abs error, reference max and non-finite counts of ``out`` against ``ref``."""
    a = np.asarray(ref, np.float64).ravel()
    b = np.asarray(out, np.float64).ravel()
    finite = np.isfinite(b)
    denom = np.linalg.norm(a) * np.linalg.norm(b[finite] if finite.all() else np.nan_to_num(b))
    cos = float(a @ np.nan_to_num(b) / denom) if denom else float(np.array_equal(a, b))
    return {
        "cosine": cos,
        "max_abs": float(np.nanmax(np.abs(a - b))) if a.size else 0.0,
        "ref_max_abs": float(np.abs(a).max(initial=0.0)),
        "nan": int(np.isnan(b).sum()),
        "inf": int(np.isinf(b).sum()),
    }


def _kv_shape(m: dict[str, Any], capacity: int) -> tuple[int, ...]:
    return (m["num_layers"], 2, 1, m["num_key_value_heads"], capacity, m["head_dim"])


def graph_feeds(manifest: dict[str, Any], seed: int = 0, text: int = 40) -> dict[str, dict[str, np.ndarray]]:
    """Random feeds of every graph at the export's shapes (the LLM: a prefill of ``text`` tokens)."""
    from mobile_o_ros.runtime.engine import decode_mask

    rng = np.random.default_rng(seed)
    m = manifest["model"]
    d, size = m["hidden_size"], manifest["image"]["size"]
    pos = np.arange(text, dtype=np.int64)
    cap = 64 * math.ceil((text + 8) / 64)
    return {
        "vision": {"images": rng.random((1, 3, size, size), dtype=np.float32)},
        "llm": {
            "inputs_embeds": (rng.standard_normal((1, text, d)) * 0.02).astype(np.float32),
            "position_ids": pos[None],
            "attention_mask": decode_mask(pos, cap, m["mask_value"]),
            "kv_cache": np.zeros(_kv_shape(m, cap), np.float32),
        },
        "mcp": {"hidden_states": rng.standard_normal((2, m["mcp_num_layers"], text, d)).astype(np.float32)},
        "dit": dit_feeds(m, text, rng),
        "vae_decoder": {
            "latents": (rng.standard_normal((1, *m["latent_shape"])) / m["vae_scaling_factor"]).astype(
                np.float32
            )
        },
    }


def dit_feeds(m: dict[str, Any], text: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """DiT feeds (CFG batch of 2) with ``text`` conditioning tokens."""
    return {
        "latents": rng.standard_normal((2, *m["latent_shape"])).astype(np.float32),
        "timestep": np.array([500.0, 500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, text, m["caption_dim"])).astype(np.float32),
        "encoder_attention_mask": np.ones((2, text), np.float32),
    }


def _decode_step(
    manifest: dict[str, Any], feeds: dict[str, np.ndarray], kv: np.ndarray
) -> dict[str, np.ndarray]:
    from mobile_o_ros.runtime.engine import decode_mask

    n = feeds["inputs_embeds"].shape[1]
    cap = feeds["kv_cache"].shape[4]
    last = np.array([n], np.int64)
    return {
        "inputs_embeds": feeds["inputs_embeds"][:, -1:],
        "position_ids": last[None],
        "attention_mask": decode_mask(last, cap, manifest["model"]["mask_value"]),
        "kv_cache": kv,
    }


# --------------------------------------------------------------------------------------------- the report
class GpuReport:
    """Runs the steps over one export folder; engines go under ``work_dir``."""

    def __init__(self, export_dir: Path, work_dir: Path, target: str = "desktop", log: Log = print) -> None:
        self.export_dir, self.work_dir, self.target, self.log = Path(export_dir), Path(work_dir), target, log
        self.manifest = load_manifest(self.export_dir)
        self.gpu, self.gpu_note = gpu_status()
        self._ort = None

    # helpers
    def need_gpu(self) -> None:
        if not self.gpu:
            raise Skip(self.gpu_note)

    def engines(self, precision: str, graphs: list[str] | None = None, **options: Any) -> Path:
        """Build (or reuse) engines of ``precision`` under the work folder."""
        from mobile_o_ros.trt.builder import build_engines

        tag = "-".join([precision, *sorted(k for k, v in options.items() if v)])
        engine_dir = self.work_dir / f"engines-{tag}"
        build_engines(
            self.export_dir,
            engine_dir,
            precision=precision,
            target=self.target,
            graphs=graphs,
            log=lambda s: self.log(f"    {s}"),
            **options,
        )
        return engine_dir

    def backend(self, engine_dir: Path, precision: str, **options: Any):
        from mobile_o_ros.runtime.trt_backend import TensorRTBackend

        return TensorRTBackend(
            self.export_dir, self.manifest, engine_dir=engine_dir, precision=precision, **options
        )

    def ort(self):
        if self._ort is None:
            from mobile_o_ros.runtime.ort_backend import OnnxRuntimeBackend

            self._ort = OnnxRuntimeBackend(self.export_dir, self.manifest)
        return self._ort

    # steps
    def step_parity(self) -> dict[str, Any]:
        self.need_gpu()
        feeds, out = graph_feeds(self.manifest), {}
        ref = {g: self.ort().run(g, f) for g, f in feeds.items()}
        ref_step = self.ort().run(
            "llm", _decode_step(self.manifest, feeds["llm"], ref["llm"]["kv_cache_out"])
        )
        for precision in ("fp32", "fp16"):
            backend = self.backend(self.engines(precision), precision)
            try:
                rows = {}
                for graph, f in feeds.items():
                    got = backend.run(graph, f)
                    for name, r in ref[graph].items():
                        key = f"{graph}/{name}" + (" (prefill)" if name == "logits" else "")
                        rows[key] = compare(r, got[name])
                    if graph == "llm":
                        step = backend.run("llm", _decode_step(self.manifest, f, got["kv_cache_out"]))
                        rows["llm/logits (decode step)"] = compare(ref_step["logits"], step["logits"])
                out[precision] = rows
            finally:
                backend.close()
        return out

    def step_fp32_layers(self) -> dict[str, Any]:
        self.need_gpu()
        from mobile_o_ros.trt.inspect import check_engine

        engine_dir = self.engines("fp16")
        out = {}
        for graph, meta in self.manifest["graphs"].items():
            layers = engine_dir / f"{graph}.fp16.layers.json"
            if not layers.is_file():
                out[graph] = {"error": f"no {layers.name}: the engine could not be inspected"}
                continue
            report = check_engine(layers, self.export_dir / meta["file"], graph, "fp16")
            report["fp32_layers"] = report["fp32_layers"][:50]  # the full list is in the layers file
            out[graph] = report
        return out

    def step_dit_buckets(self) -> dict[str, Any]:
        self.need_gpu()
        engine_dir = self.engines("fp16", ["dit"])
        plain = self.backend(engine_dir, "fp16", graphs=["dit"])
        graphed = self.backend(engine_dir, "fp16", graphs=["dit"], use_cuda_graphs=True)
        rng = np.random.default_rng(3)
        rows = []
        try:
            for i, text in enumerate((40, 100, 40, 100, 40)):
                f = dit_feeds(self.manifest["model"], text, rng)
                want = self.ort().run("dit", f)["velocity"]
                a, b = plain.run("dit", f)["velocity"], graphed.run("dit", f)["velocity"]
                rows.append(
                    {
                        "call": i + 1,
                        "text_len": text,
                        "graph_vs_plain_max_abs": float(np.abs(a.astype(np.float64) - b).max()),
                        "plain_vs_onnxruntime": compare(want, a),
                        "graph_vs_onnxruntime": compare(want, b),
                    }
                )
            captured = graphed.describe()["engines"]["dit"]["captured_cuda_graphs"]
        finally:
            graphed.close()
            plain.close()
        return {
            "calls": rows,
            "captured_cuda_graphs": captured,
            "identical": all(r["graph_vs_plain_max_abs"] == 0 for r in rows),
        }

    def step_rope(self) -> dict[str, Any]:
        self.need_gpu()
        from mobile_o_ros.runtime.engine import decode_mask

        m = self.manifest["model"]
        rng = np.random.default_rng(5)
        text, out = 32, {}
        embeds = (rng.standard_normal((1, text, m["hidden_size"])) * 0.02).astype(np.float32)
        cases = {}
        for start in (0, 600):
            pos = np.arange(start, start + text, dtype=np.int64)
            cap = 64 * math.ceil((start + text) / 64)
            cases[f"positions {start}..{start + text - 1}"] = {
                "inputs_embeds": embeds,
                "position_ids": pos[None],
                "attention_mask": decode_mask(pos, cap, m["mask_value"]),
                "kv_cache": np.zeros(_kv_shape(m, cap), np.float32),
            }
        refs = {c: self.ort().run("llm", f) for c, f in cases.items()}
        for label, options in (("fp32, TF32 off", {}), ("fp32, TF32 on", {"tf32": True})):
            backend = self.backend(self.engines("fp32", ["llm"], **options), "fp32", graphs=["llm"])
            try:
                out[label] = {
                    c: {
                        n: compare(refs[c][n], got)
                        for n, got in backend.run("llm", f).items()
                        if n != "kv_cache_out"
                    }
                    for c, f in cases.items()
                }
            finally:
                backend.close()
        backend = self.backend(self.engines("fp16", ["llm"]), "fp16", graphs=["llm"])
        try:
            out["fp16"] = {
                c: {
                    n: compare(refs[c][n], got)
                    for n, got in backend.run("llm", f).items()
                    if n != "kv_cache_out"
                }
                for c, f in cases.items()
            }
        finally:
            backend.close()
        return out

    def step_memory(self) -> dict[str, Any]:
        from mobile_o_ros.trt import cache
        from mobile_o_ros.trt.builder import budget_lines

        out: dict[str, Any] = {"onnx_budget": self.manifest.get("memory_budget")}
        if not self.gpu:
            out["skipped"] = self.gpu_note
            return out
        engine_dir = self.engines("fp16")
        entries = cache.load_engine_manifest(engine_dir)["engines"]
        out["engines"] = {
            name: {k: e.get(k) for k in ("size_bytes", "device_memory_bytes", "onnx_weights_bytes")}
            for name, e in entries.items()
            if name.endswith(".fp16.engine")
        }
        out["budget"] = budget_lines({n: entries[n] for n in out["engines"]})
        import pycuda.driver as cuda

        cuda.init()
        ctx = cuda.Device(0).retain_primary_context()
        ctx.push()
        try:
            free_before, total = cuda.mem_get_info()
        finally:
            cuda.Context.pop()
        backend = self.backend(engine_dir, "fp16")
        try:
            free_after, _ = backend.memory_info()
            info = backend.describe()
        finally:
            backend.close()
        out["all_engines_loaded"] = {
            "device_memory_used_bytes": int(free_before - free_after),
            "total_bytes": int(total),
            "shared_scratch_bytes": info["shared_device_memory_bytes"],
            "io_buffer_bytes": info["io_buffer_bytes"],
        }
        return out

    def step_decode_split(self) -> dict[str, Any]:
        self.need_gpu()
        from mobile_o_ros.runtime.engine import decode_mask
        from mobile_o_ros.trt.bench import decode_split

        m = self.manifest["model"]
        backend = self.backend(self.engines("fp16", ["llm"]), "fp16", graphs=["llm"], timing=True)
        rng = np.random.default_rng(7)
        text, steps = 300, 32
        cap = 64 * math.ceil((text + steps) / 64)
        try:
            with backend.kv_cache("llm", _kv_shape(m, cap)) as kv:
                pos = np.arange(text, dtype=np.int64)
                feeds = {
                    "inputs_embeds": (rng.standard_normal((1, text, m["hidden_size"])) * 0.02).astype(
                        np.float32
                    ),
                    "position_ids": pos[None],
                    "attention_mask": decode_mask(pos, cap, m["mask_value"]),
                }
                kv.run(feeds)
                for i in range(steps):
                    p = np.array([text + i], np.int64)
                    kv.run(
                        {
                            "inputs_embeds": feeds["inputs_embeds"][:, :1],
                            "position_ids": p[None],
                            "attention_mask": decode_mask(p, cap, m["mask_value"]),
                        }
                    )
            timings = backend.timings()
        finally:
            backend.close()
        prefill = decode_split(timings, profile=0)
        return {
            "prompt_tokens": text,
            "decode_steps": steps,
            "prefill": prefill,
            "per_decode_step": decode_split(timings),
        }

    def step_jetson(self) -> dict[str, Any]:
        if not is_jetson():
            raise Skip("not a Jetson (no /etc/nv_tegra_release)")
        from mobile_o_ros.trt.bench import power_mode

        out: dict[str, Any] = {"power": power_mode()}
        try:
            out["cma"] = cma_from_meminfo(Path("/proc/meminfo").read_text())
        except OSError as err:
            out["cma"] = {"error": str(err)}
        if not self.gpu:
            out["lm_head_chunks_1"] = {"skipped": self.gpu_note}
            return out
        out["lm_head_chunks_1"] = self.one_chunk_build()
        return out

    def one_chunk_build(self) -> dict[str, Any]:
        """Re-export only the ``llm`` graph's LM head as one chunk (a copy of the export with its manifest
        changed) and try an fp16 build; the outcome answers whether the CMA refusal is needed."""
        from mobile_o_ros.trt.builder import build_engines

        if self.manifest["model"].get("lm_head_chunks", 1) == 1:
            src = self.export_dir
        else:
            src = self.work_dir / "export-one-chunk"
            try:
                self._export_one_chunk(src)
            except ImportError as err:
                return {"skipped": f"re-exporting the LM head needs torch and the checkpoint ({err})"}
        lines: list[str] = []
        t0 = time.perf_counter()
        try:
            build_engines(
                src, self.work_dir / "engines-one-chunk", graphs=["llm"], force=True, log=lines.append
            )
            status = "built"
        except Exception as err:  # the point is to record how it fails
            status = f"failed: {err}"
        return {"status": status, "seconds": round(time.perf_counter() - t0, 1), "log_tail": lines[-15:]}

    def _export_one_chunk(self, out: Path) -> None:
        """A copy of the export (other graphs linked) whose ``llm`` graph has the LM head in one chunk."""
        from mobile_o_ros.export.onnx_export import export_graph, graph_specs, sha256_file

        source = str(self.manifest["source_checkpoint"]["path"])
        if source.startswith("random:"):
            from mobile_o_ros.export.parts import build_parts

            model = build_parts(source.removeprefix("random:"), ["llm"])
        else:
            from mobile_o_ros.reference.checkpoint import load_checkpoint

            model = load_checkpoint(Path(source)).model.float().eval()
        out.mkdir(parents=True, exist_ok=True)
        meta = export_graph(graph_specs(model, 1, names=["llm"])[0], out)
        manifest = json.loads(json.dumps(self.manifest))
        for name, g in manifest["graphs"].items():
            for f in g["files"] if name != "llm" else []:
                if not (out / f).exists():
                    (out / f).symlink_to((self.export_dir / f).resolve())
        manifest["graphs"]["llm"] = meta
        manifest["model"]["lm_head_chunks"] = 1
        files = {f: d for f, d in manifest["files"].items() if (out / f).exists()}
        manifest["files"] = {**files, **{f: sha256_file(out / f) for f in meta["files"]}}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    # running
    def run(self) -> dict[str, Any]:
        """Every step in order; a step's failure is recorded and the next one runs."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {
            "export_dir": str(self.export_dir),
            "model": self.manifest["model"].get("name"),
            "target": self.target,
            "machine": platform.node(),
            "gpu": self.gpu_note,
            "jetson": is_jetson(),
            "steps": {},
        }
        t_all = time.perf_counter()
        for step in STEPS:
            self.log(f"{TITLES[step]} ...")
            t0 = time.perf_counter()
            try:
                result = {"status": "done", "result": getattr(self, f"step_{step}")()}
            except Skip as why:
                result = {"status": "skipped", "reason": str(why)}
            except Exception as err:  # record it and go on: the report is the product
                result = {
                    "status": "failed",
                    "error": f"{type(err).__name__}: {err}",
                    "trace": traceback.format_exc(limit=4),
                }
            result["seconds"] = round(time.perf_counter() - t0, 1)
            self.log(f"  {result['status']} ({result['seconds']} s) {result.get('reason', '')}".rstrip())
            report["steps"][step] = result
        report["seconds"] = round(time.perf_counter() - t_all, 1)
        return report


# --------------------------------------------------------------------------------------------- markdown
def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3e}" if (x and (abs(x) < 1e-3 or abs(x) >= 1e5)) else f"{x:.6g}"
    return str(x)


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _metric_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| output | cosine | max abs err | ref max abs | NaN | inf |", "|---|---|---|---|---|---|"]
    for name, m in rows.items():
        lines.append(
            _row(name, f"{m['cosine']:.7f}", _fmt(m["max_abs"]), _fmt(m["ref_max_abs"]), m["nan"], m["inf"])
        )
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: one section per step."""
    out = [
        "# GPU first-run report",
        "",
        f"- export: `{report['export_dir']}` ({report['model']}), target `{report['target']}`",
        f"- machine: {report['machine']}; GPU: {report['gpu']}",
        f"- Jetson: {'yes' if report['jetson'] else 'no'}",
        f"- total: {report['seconds']} s",
        "",
    ]
    for step in STEPS:
        r = report["steps"][step]
        out += [f"## {TITLES[step]}", ""]
        if r["status"] == "skipped":
            out += [f"Skipped: {r['reason']}.", ""]
            continue
        if r["status"] == "failed":
            out += [f"Failed: `{r['error']}`", ""]
            continue
        res = r["result"]
        if step == "parity":
            for precision, rows in res.items():
                out += [f"**{precision}**", "", *_metric_table(rows), ""]
        elif step == "fp32_layers":
            out += [
                "| graph | rule | pinned nodes | fp32 | half (violation) | not visible (Myelin/fused) |",
                "|---|---|---|---|---|---|",
            ]
            for graph, g in res.items():
                for rule, row in g.get("by_rule", {}).items():
                    out.append(
                        _row(graph, rule, row["nodes"], row["fp32"], row["reduced"], row["not_visible"])
                    )
            out.append("")
            for graph, g in res.items():
                if g.get("violations"):
                    out.append(
                        f"- {graph}: {len(g['violations'])} pinned nodes run in half precision, "
                        f"e.g. {g['violations'][0]}"
                    )
                if g.get("foreign_nodes"):
                    out.append(f"- {graph}: {len(g['foreign_nodes'])} Myelin foreign nodes")
            out.append("")
        elif step == "dit_buckets":
            out += [
                "| call | text len | graph vs plain max abs | plain vs ORT cosine | graph vs ORT cosine |",
                "|---|---|---|---|---|",
            ]
            for c in res["calls"]:
                out.append(
                    f"| {c['call']} | {c['text_len']} | {_fmt(c['graph_vs_plain_max_abs'])} | "
                    f"{c['plain_vs_onnxruntime']['cosine']:.7f} | {c['graph_vs_onnxruntime']['cosine']:.7f} |"
                )
            out += [
                "",
                f"Captured graphs: {res['captured_cuda_graphs']}; "
                f"graph = plain on every call: {res['identical']}.",
                "",
            ]
        elif step == "rope":
            for label, cases in res.items():
                for case, rows in cases.items():
                    out += [f"**{label}, {case}**", "", *_metric_table(rows), ""]
        elif step == "memory":
            b = res.get("onnx_budget") or {}
            if b:
                out += ["| graph | ONNX weights (fp32) | at fp16 |", "|---|---|---|"]
                for g, row in b["graphs"].items():
                    out.append(_row(g, _mib(row["weights_bytes"]), _mib(row["weights_bytes_fp16"])))
                out += [
                    _row("all", _mib(b["total_weights_bytes"]), _mib(b["total_weights_bytes_fp16"])),
                    "",
                    f"Host embedding table: {b['embed_table_bytes'] / 2**20:.1f} MiB.",
                    "",
                ]
            if "skipped" in res:
                out += [f"TensorRT figures skipped: {res['skipped']}.", ""]
            else:
                out += ["```", *res["budget"], "```", ""]
                a = res["all_engines_loaded"]
                out += [
                    f"All engines loaded: {_mib(a['device_memory_used_bytes'])} of device memory used.",
                    "",
                ]
        elif step == "decode_split":
            s = res["per_decode_step"]
            out += [
                f"Prompt {res['prompt_tokens']} tokens, {res['decode_steps']} decode steps.",
                "",
                "| phase | h2d ms | enqueue ms | d2h ms | wall ms |",
                "|---|---|---|---|---|",
            ]
            for label, row in (("prefill", res["prefill"]), ("decode step (mean)", s)):
                if row.get("calls"):
                    out.append(
                        _row(label, *(f"{row[k]:.3f}" for k in ("h2d_ms", "enqueue_ms", "d2h_ms", "wall_ms")))
                    )
            out.append("")
        elif step == "jetson":
            out += ["```", json.dumps(res, indent=2, default=str), "```", ""]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------- entry
def tiny_export(work_dir: Path, log: Log = print) -> Path:
    """The tiny test export (seed 0, LM head in two) under ``work_dir``, made once (needs torch)."""
    out = work_dir / "tiny-export"
    if (out / "manifest.json").is_file():
        try:
            load_manifest(out)
            return out
        except Exception:
            shutil.rmtree(out)
    from mobile_o_ros.export.onnx_export import export_model
    from mobile_o_ros.reference.checkpoint import load_checkpoint
    from mobile_o_ros.reference.tiny import make_tiny_checkpoint

    log(f"making the tiny export under {out}")
    ckpt = make_tiny_checkpoint(work_dir / "tiny-checkpoint", seed=0)
    export_model(load_checkpoint(ckpt), out, lm_head_chunks=2)
    return out


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``gpu_report.json`` and ``gpu_report.md`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    j, md = out_dir / "gpu_report.json", out_dir / "gpu_report.md"
    j.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md.write_text(to_markdown(report))
    return j, md


def random_export(config: str, out: Path, lm_head_chunks: int | None = None, log: Log = print) -> Path:
    """Every graph of a named configuration (e.g. ``real-0.5b``) with random weights, exported one part at
    a time, with a manifest the builder and the backend read (no tokenizer, no host tables)."""
    import gc

    from mobile_o_ros.export import graphs as graph_wrappers
    from mobile_o_ros.export.onnx_export import (
        MANIFEST_VERSION,
        export_graph,
        graph_specs,
        memory_budget,
        model_section,
        sha256_file,
    )
    from mobile_o_ros.export.parts import PARTS_OF_GRAPH, build_parts

    if (out / "manifest.json").is_file():
        try:
            load_manifest(out)
            return out
        except Exception:
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    metas: dict[str, Any] = {}
    cfg = None
    for name in PARTS_OF_GRAPH:
        log(f"  exporting {name} ({config}, random weights)")
        parts = build_parts(config, [name])
        cfg = parts.config
        chunks = lm_head_chunks or graph_wrappers.lm_head_chunks_for(
            int(cfg.llm["vocab_size"]), cfg.hidden_size
        )
        metas[name] = export_graph(graph_specs(parts, chunks, names=[name])[0], out)
        del parts
        gc.collect()
    manifest = {
        "format": "mobile_o_ros.export",
        "version": MANIFEST_VERSION,
        "source_checkpoint": {"path": f"random:{config}", "sha256": None},
        "model": model_section(cfg, chunks),
        "image": {"size": cfg.image_size, "num_tokens": cfg.num_image_tokens},
        "graphs": metas,
        "memory_budget": memory_budget(metas, int(cfg.llm["vocab_size"]) * cfg.hidden_size * 2),
    }
    manifest["files"] = {f: sha256_file(out / f) for g in metas.values() for f in g["files"]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------------------------ verb
def cmd_gpu_report(args: argparse.Namespace) -> int:
    """Run the first-GPU checks and write gpu_report.json + gpu_report.md; one-line errors via CliError."""
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"--out is a file: {out_dir}")
    work = Path(args.work_dir) if args.work_dir else out_dir / "work"
    if args.export and args.real_size:
        raise CliError("--export and --real-size contradict each other (--real-size makes its own export)")
    try:
        if args.export:
            export_dir = Path(args.export)
            if not export_dir.is_dir():
                raise CliError(f"export folder not found: {export_dir}")
        elif args.real_size:
            export_dir = random_export("real-0.5b", work / "export-real-0.5b")
        else:
            export_dir = tiny_export(work)
    except ImportError as err:
        raise CliError(
            f"making the export needs torch ({err}); pass --export DIR (e.g. `make tiny-export` elsewhere)"
        ) from err
    target = args.target or ("orin-nano" if is_jetson() else "desktop")
    try:
        runner = GpuReport(export_dir, work, target=target)
    except ManifestError as err:
        raise CliError(str(err)) from err
    result = runner.run()
    json_path, md_path = write_report(result, out_dir)
    for step, r in result["steps"].items():
        note = r.get("reason") or r.get("error") or ""
        print(f"{step}: {r['status']}{' (' + note + ')' if note else ''}")
    print(f"report: {md_path} and {json_path} ({result['seconds']} s)")
    failed = [s for s, r in result["steps"].items() if r["status"] == "failed"]
    if failed:
        raise CliError(f"{len(failed)} step(s) failed: {', '.join(failed)}; see {md_path}", EXIT_FAILURE)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``gpu-report [--export DIR | --real-size] [--out DIR] [--work-dir DIR] [--target T]``."""
    p = subparsers.add_parser(
        "gpu-report",
        help="run what the first GPU with TensorRT must answer; a JSON + Markdown report",
        description="Engines against onnxruntime (fp32, fp16), the engine inspector against the precision "
        "policy, DiT buckets with and without CUDA graphs, positions above 500 with TF32 on and off, memory "
        "per engine, the decode step's copies and enqueue, and on a Jetson the power mode, CMA and a "
        "one-chunk LM head build. Steps this machine cannot run are reported as skipped.",
    )
    p.add_argument("--export", default=None, help="export folder (default: the tiny test export, made once)")
    p.add_argument(
        "--real-size", action="store_true", help="use the real 0.5B configuration with random weights (slow)"
    )
    p.add_argument("--out", default="gpu_report", help="where gpu_report.json and gpu_report.md go")
    p.add_argument("--work-dir", default=None, help="exports and engines (default: OUT/work)")
    p.add_argument(
        "--target", choices=tuple(TARGETS), default=None, help="build target (default: orin-nano on a Jetson)"
    )
    p.set_defaults(func=cmd_gpu_report)
    return p
