"""The ``mobile-o`` command line (also ``python -m mobile_o_ros``).

Every verb prints a one-line ``mobile-o: error: ...`` and exits nonzero on bad input; heavy libraries are
imported only by the verbs that need them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from mobile_o_ros import validation
from mobile_o_ros.errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED, CliError
from mobile_o_ros.model_config import PRESETS


# ------------------------------------------------------------------------------------------- helpers
def _read_image(path: str):
    """An RGB uint8 array from an image file, or a CliError."""
    import cv2

    p = Path(path)
    if not p.is_file():
        raise CliError(f"image not found: {path}")
    bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise CliError(f"cannot read image: {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _write_image(path: str, rgb) -> None:
    import cv2

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise CliError(f"cannot write image: {path}", EXIT_FAILURE)


def _progress(enabled: bool):
    """(on_step callback, close) of a tqdm bar over denoising steps on a terminal, else (None, no-op)."""
    if not enabled or not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bars: list[Any] = []

    def on_step(step: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="denoising", unit="step", file=sys.stderr))
        bars[0].update(1)

    return on_step, lambda: [bar.close() for bar in bars]


def _emit(result: dict[str, Any], as_json: bool, text: str) -> None:
    print(json.dumps(result, indent=2) if as_json else text)


def _check_model(model: str):
    """The :class:`~mobile_o_ros.model_store.Model` a model argument names, or a CliError."""
    from mobile_o_ros import model_store

    try:
        return model_store.resolve(model)
    except model_store.ModelError as err:
        raise CliError(str(err)) from err


def _pipeline(args: argparse.Namespace):
    """(pipeline, model) for ``args.model`` on ``args.backend``; a model or backend that cannot load is a
    CliError. The runtime backends need an export folder here (``mobile-o export`` makes one)."""
    from mobile_o_ros import model_store
    from mobile_o_ros.checkpoint_files import CheckpointError
    from mobile_o_ros.manifest import ManifestError
    from mobile_o_ros.runtime.backend import BackendError

    model = _check_model(args.model)
    try:
        pipeline = model_store.load_pipeline(model, args.backend, args.dtype, export_checkpoint=False)
    except (model_store.ModelError, ManifestError, CheckpointError) as err:
        raise CliError(str(err)) from err
    except (BackendError, ImportError, OSError) as err:
        raise CliError(f"cannot load {model.path} on {args.backend}: {err}", EXIT_FAILURE) from err
    return pipeline, model


def _unknown_words(model_dir: Path, text: str) -> tuple[list[str], str]:
    """The words of ``text`` the model never saw, and the one-line warning naming them ("" when none)."""
    from mobile_o_ros import vocabulary

    vocab = vocabulary.load(model_dir)
    unknown = [] if vocab is None else vocab.unknown(text)
    if vocab is None or not unknown:
        return [], ""
    return unknown, f"mobile-o: warning: {vocab.warning(unknown)}"


# ------------------------------------------------------------------------------------------- verbs
def cmd_make_tiny_checkpoint(args: argparse.Namespace) -> int:
    from mobile_o_ros.reference.tiny import make_tiny_checkpoint

    out = make_tiny_checkpoint(Path(args.dir), seed=args.seed)
    print(f"wrote tiny checkpoint to {out}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from mobile_o_ros.reference.inspect_model import inspect_target

    if bool(args.model) == bool(args.config):
        raise CliError("give either MODEL or --config NAME")
    validation.check_steps(args.steps)
    model = _check_model(args.model).path if args.model else None
    try:
        report = inspect_target(model, args.config, args.steps)
    except (OSError, ValueError, KeyError) as err:
        raise CliError(f"cannot inspect {args.model or args.config}: {err}") from err
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"config: {report['config']}")
    for name, c in report["components"].items():
        print(
            f"  {name:<13} {c['parameters']:>14,} parameters  {c['checkpoint_keys']:>5} keys  {c['dtypes']}"
        )
    print(
        f"  {'total':<13} {report['total_parameters']:>14,} parameters  {report['checkpoint_keys']:>5} keys"
    )
    ts = report["scheduler"]["timesteps"]
    print(f"timesteps ({report['scheduler']['steps']} steps): {', '.join(map(str, ts))}")
    return 0


def _image_task(args: argparse.Namespace, text: str, source=None) -> int:
    """Shared body of ``generate`` (``source`` None) and ``edit``: run, write the PNG, report."""
    pipeline, model = _pipeline(args)
    unknown, warning = _unknown_words(model.path, text)
    on_step, close = _progress(not args.json)
    options = {"steps": args.steps, "guidance_scale": args.guidance, "seed": args.seed, "on_step": on_step}
    t0 = time.perf_counter()
    try:
        result = (
            pipeline.generate(text, **options) if source is None else pipeline.edit(source, text, **options)
        )
    finally:
        close()
    _write_image(args.output, result.image)
    latency = (time.perf_counter() - t0) * 1000
    if warning:
        print(warning, file=sys.stderr)
    report = {
        "output": args.output,
        "steps": result.steps,
        "guidance_scale": result.guidance_scale,
        "seed": result.seed,
        "latency_ms": round(latency, 1),
        "unknown_words": unknown,
    }
    _emit(report, args.json, f"wrote {args.output} (seed {result.seed}, {latency:.0f} ms)")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    return _image_task(args, args.prompt)


def cmd_edit(args: argparse.Namespace) -> int:
    return _image_task(args, args.instruction, source=_read_image(args.image))


def cmd_ask(args: argparse.Namespace) -> int:
    image = _read_image(args.image)
    pipeline, model = _pipeline(args)
    unknown, warning = _unknown_words(model.path, args.question)
    t0 = time.perf_counter()
    res = pipeline.ask(
        image,
        args.question,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )
    latency = (time.perf_counter() - t0) * 1000
    if warning:
        print(warning, file=sys.stderr)
    result = {
        "answer": res.answer,
        "num_tokens": res.num_tokens,
        "seed": res.seed,
        "latency_ms": round(latency, 1),
    }
    _emit({**result, "unknown_words": unknown}, args.json, res.answer)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mobile_o_ros.export.onnx_export import export_model
    from mobile_o_ros.reference.checkpoint import CheckpointError, load_checkpoint

    model_dir = _check_model(args.model).path
    calibration = _calibration(args)
    try:
        loaded = load_checkpoint(model_dir)
    except CheckpointError as err:
        raise CliError(str(err)) from err
    t0 = time.perf_counter()
    manifest = export_model(
        loaded,
        Path(args.out_dir),
        only=args.only,
        lm_head_chunks=args.lm_head_chunks,
        embed_dtype=args.embed_dtype,
    )
    graphs = ", ".join(manifest["graphs"])
    print(f"exported {graphs} to {args.out_dir} in {time.perf_counter() - t0:.1f} s")
    if calibration is not None:
        from mobile_o_ros.export.quantize import quantize_export

        modes = {"auto": ("int8-qdq", "int8-dynamic"), "qdq": ("int8-qdq",), "dynamic": ("int8-dynamic",)}
        section = quantize_export(
            Path(args.out_dir), calibration, force=args.force_int8 or (), modes=modes[args.int8_mode]
        )
        chosen = [g for g, d in section["graphs"].items() if d["mode"] != "fp32"]
        print(f"int8: {', '.join(chosen) or 'no graph'} (decisions in manifest.json 'quantization')")
    return 0


def _calibration(args: argparse.Namespace):
    """The calibration set of ``export --quantize int8`` (None without it), or a CliError."""
    if not args.quantize:
        if args.calibration or args.force_int8 or args.int8_mode != "auto":
            raise CliError("--calibration, --force-int8 and --int8-mode need --quantize int8")
        return None
    if args.only:
        raise CliError("--quantize runs the whole pipeline to calibrate: export every graph (no --only)")
    from mobile_o_ros.manifest import REQUIRED_GRAPHS

    unknown = sorted(set(args.force_int8 or ()) - set(REQUIRED_GRAPHS))
    if unknown:
        raise CliError(
            f"--force-int8: unknown graphs {', '.join(unknown)} (choose from {', '.join(REQUIRED_GRAPHS)})"
        )
    from mobile_o_ros.export.calibration import CalibrationError
    from mobile_o_ros.shapes.calibration import calibration_set

    try:
        return calibration_set(args.calibration)
    except CalibrationError as err:
        raise CliError(str(err)) from err


def _print_graph_rows(graph_results: dict) -> None:
    for graph, outputs in graph_results.items():
        for out, m in outputs.items():
            if out.startswith("_"):
                continue
            flag = "ok " if m["pass"] else "BAD"
            print(
                f"{flag} {graph:<12} {out:<20} cosine {m['cosine']:.8f}  max_abs {m['max_abs']:.3e}"
                f"  (ref max {m['ref_max_abs']:.3e})"
            )


def cmd_parity(args: argparse.Namespace) -> int:
    from mobile_o_ros.export.parity import parity_report, random_weight_parity
    from mobile_o_ros.manifest import ManifestError
    from mobile_o_ros.reference.checkpoint import CheckpointError, load_checkpoint
    from mobile_o_ros.runtime.engine import MobileORuntime

    if args.config:
        if args.checkpoint or args.export_dir:
            raise CliError("give CHECKPOINT EXPORT_DIR, or --config NAME --work-dir DIR, not both")
        report = random_weight_parity(args.config, Path(args.work_dir), args.graphs)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"random weights at {args.config}:")
            _print_graph_rows(report["graphs"])
            print("PASS" if report["pass"] else "FAIL")
        return 0 if report["pass"] else EXIT_FAILURE
    if not (args.checkpoint and args.export_dir):
        raise CliError("give CHECKPOINT EXPORT_DIR (or --config NAME for random weights)")
    try:
        loaded = load_checkpoint(_check_model(args.checkpoint).path)
        runtime = MobileORuntime.load(_check_model(args.export_dir).path, backend="onnxruntime", verify=True)
    except (CheckpointError, ManifestError) as err:
        raise CliError(str(err)) from err
    report = parity_report(loaded, runtime, steps=args.steps)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_graph_rows(report["graphs"])
        e = report["end_to_end"]
        print(f"answer identical: {e['answer']['identical_ids']} ({e['answer']['num_tokens']} tokens)")
        print(
            f"generate PSNR {e['generate']['psnr_db']:.2f} dB, edit PSNR {e['edit']['psnr_db']:.2f} dB "
            f"({e['generate']['steps']} steps)"
        )
        print("PASS" if report["pass"] else "FAIL")
    return 0 if report["pass"] else EXIT_FAILURE


def cmd_demo(args: argparse.Namespace) -> int:
    from mobile_o_ros.demo import run_demo

    return run_demo(Path(args.out), model=args.model)


def cmd_bench(args: argparse.Namespace) -> int:
    from mobile_o_ros.bench import run_bench

    return run_bench(
        Path(args.out),
        quick=args.quick,
        components=args.components,
        tensorrt_export=Path(args.tensorrt_export) if args.tensorrt_export else None,
        sections=args.sections,
        allow_loaded=args.allow_loaded,
    )


# ------------------------------------------------------------------------------------------- parser
def _add_gen_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps (default: the model's, 20 for the released one)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="CFG scale (default: the model's, 1.5 for the released one)",
    )
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: random; -1 = random)")
    p.add_argument("-o", "--output", required=True, help="output PNG path")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "onnxruntime", "tensorrt"),
        default="auto",
        help="auto: torch for a checkpoint folder, onnxruntime for an export folder",
    )
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help=(
            "torch backend, generate and edit: the precision of the MCP, DiT and VAE (the vision tower "
            "and LLM stay fp32; ask runs in fp32; the exported backends ignore it)"
        ),
    )
    p.add_argument("--json", action="store_true", help="print a JSON result")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of all verbs."""
    parser = argparse.ArgumentParser(prog="mobile-o", description="Mobile-O on robots: export, run, serve.")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("make-tiny-checkpoint", help="write a tiny random checkpoint in the real key layout")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_tiny_checkpoint)

    p = sub.add_parser("inspect", help="parameter/key counts of a checkpoint or a named config")
    p.add_argument("model", nargs="?")
    p.add_argument("--config", choices=PRESETS)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("ask", help="answer a question about an image")
    p.add_argument("model")
    p.add_argument("--image", required=True)
    p.add_argument("question")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="answer tokens at most (default: the model's, 256 for the released one)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="0 = greedy (default: the model's, greedy for all ours)",
    )
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--seed", type=int, default=None)
    _add_common(p)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("generate", help="generate an image from a prompt (512x512 with the released model)")
    p.add_argument("model")
    p.add_argument("prompt")
    _add_gen_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("edit", help="edit an image following an instruction")
    p.add_argument("model")
    p.add_argument("--image", required=True)
    p.add_argument("instruction")
    _add_gen_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("export", help="export a checkpoint to ONNX graphs + manifest")
    p.add_argument("model")
    p.add_argument("out_dir")
    p.add_argument("--only", nargs="+", default=None, help="export only these graphs")
    p.add_argument("--lm-head-chunks", type=int, default=None, help="split the LM head along the vocabulary")
    p.add_argument(
        "--embed-dtype",
        choices=("auto", "fp16", "fp32"),
        default="auto",
        help="the host embedding table: auto = fp16 when the checkpoint stores it in 16 bits, else fp32",
    )
    p.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="also write int8 (QDQ) graphs where they pay; the manifest records each decision",
    )
    p.add_argument(
        "--calibration",
        default=None,
        metavar="DIR",
        help="with --quantize: images/*.png|jpg and prompts.txt to calibrate on (default: shapes scenes)",
    )
    p.add_argument(
        "--force-int8",
        nargs="+",
        default=None,
        metavar="GRAPH",
        help="with --quantize: keep these graphs int8 whatever their measured speed and cosine",
    )
    p.add_argument(
        "--int8-mode",
        choices=("auto", "qdq", "dynamic"),
        default="auto",
        help=(
            "with --quantize: the candidates tried per graph: qdq (TensorRT builds INT8 engines of them), "
            "dynamic (onnxruntime only), auto = both, the faster kept (default)"
        ),
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("parity", help="compare an export with the PyTorch reference")
    p.add_argument("checkpoint", nargs="?")
    p.add_argument("export_dir", nargs="?")
    p.add_argument("--steps", type=int, default=4, help="denoising steps for the end-to-end images")
    p.add_argument("--config", choices=PRESETS, help="per-graph parity with random weights at this size")
    p.add_argument("--work-dir", default="bench_out/parity", help="where --config exports its graphs")
    p.add_argument("--graphs", nargs="+", default=None, help="with --config: only these graphs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_parity)

    from mobile_o_ros.gpu_report import add_parser as add_gpu_report_parser
    from mobile_o_ros.ros.cli import add_parsers as add_ros_parsers
    from mobile_o_ros.trt.cli import add_build_engines_parser

    add_build_engines_parser(sub)
    add_gpu_report_parser(sub)
    add_ros_parsers(sub)

    p = sub.add_parser("demo", help="run the demo and write outputs under OUT")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--model", default=None, help="checkpoint or export folder (default: the embedded model)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="benchmark components; JSON and PNG under OUT")
    p.add_argument("--out", default="bench_out")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    p.add_argument("--components", nargs="+", default=None, help="only these components")
    p.add_argument("--tensorrt-export", default=None, help="also measure TensorRT engines of this export")
    p.add_argument(
        "--sections",
        nargs="+",
        default=None,
        help="only these sections: components, int8, annotate, ttft (default all)",
    )
    p.add_argument(
        "--allow-loaded",
        action="store_true",
        help="run although the 1-minute load is above half the cores; every row is marked loaded",
    )
    p.set_defaults(func=cmd_bench)

    from mobile_o_ros.shapes.cli import add_parsers as add_shapes_parsers
    from mobile_o_ros.shapes.draw import add_parser as add_draw_scene_parser

    add_shapes_parsers(sub)  # train-demo, selftest
    add_draw_scene_parser(sub)
    from mobile_o_ros.annotate.cli import add_parsers as add_annotate_parsers

    add_annotate_parsers(sub)  # annotate, make-field-bag
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mobile-o``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("guidance", "temperature", "top_p"):
        value = getattr(args, name, None)
        if isinstance(value, float) and not math.isfinite(value):
            print(f"mobile-o: error: {name.replace('_', '-')} must be finite, got {value}", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except validation.InvalidRequest as err:
        print(f"mobile-o: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CliError as err:
        print(f"mobile-o: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("mobile-o: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
