"""TensorRT on a real GPU (``make test-gpu``): engines built from the tiny export, every graph against
onnxruntime (per-output tolerances, cosine, max error), and the pipelines end to end (image PSNR, greedy
answers). Skipped, with the reason, where TensorRT, pycuda or a CUDA GPU is missing.

The fp16 tolerances are first estimates for the tiny random-weight model; the real model's parity is
``mobile-o parity``'s job on the device.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest

from mobile_o_ros import prompts
from mobile_o_ros.runtime.backend import BackendError
from mobile_o_ros.runtime.engine import decode_mask
from mobile_o_ros.trt import builder, cache

pytestmark = pytest.mark.gpu

PRECISIONS = ("fp32", "fp16")
#: per precision: minimum cosine and maximum |error| relative to the reference's max |value|, per output
#: (``*`` = default).
TOLERANCES = {
    "fp32": {"*": (0.99999, 1e-3)},
    "fp16": {"*": (0.999, 3e-2), "logits": (0.999, 5e-2), "kv_cache_out": (0.999, 3e-2)},
}
MIN_PSNR_DB = {"fp32": 40.0, "fp16": 25.0}


@pytest.fixture(scope="session")
def gpu() -> tuple[str, str]:
    """Skip unless TensorRT, pycuda and a CUDA device are usable; returns (GPU name, compute capability)."""
    pytest.importorskip(
        "tensorrt",
        reason="TensorRT is not installed (JetPack 6 ships TensorRT 10.3; "
        "elsewhere install it on a CUDA machine)",
    )
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed (pip install pycuda, nvcc on PATH)")
    try:
        return cache.gpu_identity()
    except cache.EngineCacheError as err:
        pytest.skip(f"no usable CUDA GPU: {err}")


@pytest.fixture(scope="session", params=PRECISIONS)
def engines(
    request: pytest.FixtureRequest,
    gpu: tuple[str, str],
    tiny_export: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, Path]:
    """(precision, engine dir) with every graph of the tiny export built once per session."""
    precision = request.param
    engine_dir = tmp_path_factory.mktemp(f"engines_{precision}")
    builder.build_engines(tiny_export, engine_dir, precision=precision, target="orin-nano")
    return precision, engine_dir


@pytest.fixture(scope="session")
def ort_runtime(tiny_export: Path):
    from mobile_o_ros.runtime.engine import MobileORuntime

    return MobileORuntime.load(tiny_export, backend="onnxruntime")


@pytest.fixture(scope="session")
def trt_runtime(engines: tuple[str, Path], tiny_export: Path):
    from mobile_o_ros.runtime.engine import MobileORuntime

    precision, engine_dir = engines
    rt = MobileORuntime.load(tiny_export, backend="tensorrt", engine_dir=engine_dir, precision=precision)
    yield rt
    rt.close()


def _metrics(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    a, b = np.asarray(ref, np.float64).ravel(), np.asarray(out, np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return {
        "cosine": float(a @ b / denom) if denom else float(np.array_equal(a, b)),
        "max_abs": float(np.abs(a - b).max()),
        "ref_max_abs": float(np.abs(a).max()),
    }


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _scene() -> np.ndarray:
    img = np.zeros((300, 400, 3), np.uint8)
    img[60:200, 80:220] = (220, 40, 40)
    img[150:280, 250:380] = (30, 60, 210)
    return img


def _mcp_inputs(rt, embeds: np.ndarray) -> np.ndarray:
    """The ``llm`` graph's ``mcp_inputs`` of one prefill (what generation feeds the MCP)."""
    n = len(embeds)
    pos = np.arange(n, dtype=np.int64)
    with rt.backend.kv_cache("llm", rt.kv_shape(n)) as kv:
        feeds = {
            "inputs_embeds": embeds[None],
            "position_ids": pos[None],
            "attention_mask": decode_mask(pos, n),
        }
        return kv.run(feeds, outputs=("mcp_inputs",))["mcp_inputs"]


def _graph_feeds(rt) -> dict[str, dict[str, np.ndarray]]:
    """Realistic feeds: a templated prompt with an image, its LLM states, MCP output and random latents."""
    rng = np.random.default_rng(7)
    m = rt.model_info
    embeds = rt.prompt_embeddings(prompts.edit_prompt("make the red square green"), _scene())
    n = len(embeds)
    cap = math.ceil((n + 8) / 64) * 64
    pos = np.arange(n, dtype=np.int64)
    kv_shape = (m["num_layers"], 2, 1, m["num_key_value_heads"], cap, m["head_dim"])
    stacked = _mcp_inputs(rt, embeds)
    cfg = np.concatenate([np.zeros_like(stacked), stacked])
    cond = rt.backend.run("mcp", {"hidden_states": cfg})["conditioning"]
    return {
        "vision": {"images": rng.random((1, 3, rt.image_size, rt.image_size), dtype=np.float32)},
        "llm": {
            "inputs_embeds": embeds[None],
            "position_ids": pos[None],
            "attention_mask": decode_mask(pos, cap),
            "kv_cache": np.zeros(kv_shape, np.float32),
        },
        "mcp": {"hidden_states": cfg},
        "dit": {
            "latents": rng.standard_normal((2, *rt.latent_shape)).astype(np.float32),
            "timestep": np.array([999.0, 999.0], np.float32),
            "encoder_hidden_states": cond,
            "encoder_attention_mask": np.ones(cond.shape[:2], np.float32),
        },
        "vae_decoder": {"latents": (rng.standard_normal((1, *rt.latent_shape)) / 0.41407).astype(np.float32)},
    }


def test_engines_are_built_cached_and_pinned(engines: tuple[str, Path], tiny_export: Path) -> None:
    precision, engine_dir = engines
    entries = cache.load_engine_manifest(engine_dir)["engines"]
    assert len(entries) == 5
    again = builder.build_engines(tiny_export, engine_dir, precision=precision, no_build=True)
    assert {r.status for r in again} == {"fresh"}
    dit = entries[f"dit.{precision}.engine"]
    if precision == "fp16":  # the parser's layer metadata maps TensorRT layers back to the ONNX rules
        assert dit["fp32_layers"].get("sana_linear_attention", 0) > 0, dit["fp32_layers"]
        assert dit["fp32_layers"].get("sana_time_embedding", 0) > 0, dit["fp32_layers"]
    else:
        assert dit["fp32_layers"] == {}


def test_every_graph_matches_onnxruntime(engines: tuple[str, Path], trt_runtime, ort_runtime) -> None:
    precision = engines[0]
    tol = TOLERANCES[precision]
    failures = []
    for graph, feeds in _graph_feeds(ort_runtime).items():
        ref = ort_runtime.backend.run(graph, feeds)
        out = trt_runtime.backend.run(graph, feeds)
        for name, r in ref.items():
            assert out[name].shape == r.shape and out[name].dtype == r.dtype, (graph, name)
            m = _metrics(r, out[name])
            min_cos, rel = tol.get(name, tol["*"])
            line = (
                f"{precision} {graph}/{name}: cosine {m['cosine']:.7f} max_abs {m['max_abs']:.3e} "
                f"(ref max {m['ref_max_abs']:.3e})"
            )
            print(line)
            if not (m["cosine"] >= min_cos and m["max_abs"] <= rel * max(m["ref_max_abs"], 1e-6)):
                failures.append(line)
    assert not failures, "\n".join(failures)


def test_dit_text_padding_on_the_gpu(engines: tuple[str, Path], trt_runtime, ort_runtime) -> None:
    feeds = _graph_feeds(ort_runtime)["dit"]
    n = feeds["encoder_hidden_states"].shape[1]
    short = {
        **feeds,
        "encoder_hidden_states": feeds["encoder_hidden_states"][:, : n // 3],
        "encoder_attention_mask": feeds["encoder_attention_mask"][:, : n // 3],
    }
    ref = ort_runtime.backend.run("dit", short)["velocity"]  # unpadded
    m = _metrics(ref, trt_runtime.backend.run("dit", short)["velocity"])  # padded to the 64 bucket
    assert m["cosine"] >= TOLERANCES[engines[0]]["*"][0], m


def test_cuda_graphs_replay_matches_enqueue(
    engines: tuple[str, Path], tiny_export: Path, ort_runtime
) -> None:
    from mobile_o_ros.runtime.trt_backend import TensorRTBackend

    precision, engine_dir = engines
    feeds = _graph_feeds(ort_runtime)
    plain = TensorRTBackend(
        tiny_export, ort_runtime.manifest, engine_dir, precision=precision, graphs=["dit", "vae_decoder"]
    )
    graphed = TensorRTBackend(
        tiny_export,
        ort_runtime.manifest,
        engine_dir,
        precision=precision,
        graphs=["dit", "vae_decoder"],
        use_cuda_graphs=True,
    )
    try:
        for graph in ("dit", "vae_decoder"):
            (name,) = [o["name"] for o in ort_runtime.manifest["graphs"][graph]["outputs"]]
            want = plain.run(graph, feeds[graph])[name]
            graphed.run(graph, feeds[graph])  # warm-up + capture
            scaled = {k: (v * 0.5 if k == "latents" else v) for k, v in feeds[graph].items()}
            np.testing.assert_allclose(
                graphed.run(graph, scaled)[name], plain.run(graph, scaled)[name], rtol=1e-5, atol=1e-5
            )
            np.testing.assert_allclose(graphed.run(graph, feeds[graph])[name], want, rtol=1e-5, atol=1e-5)
        assert graphed.describe()["engines"]["dit"]["captured_cuda_graphs"] == 1
    finally:
        graphed.close()
        plain.close()


def test_backend_refuses_other_threads(trt_runtime) -> None:
    errors: list[Exception] = []

    def call() -> None:
        try:
            trt_runtime.backend.run("vae_decoder", {"latents": np.zeros((1, 32, 16, 16), np.float32)})
        except BackendError as err:
            errors.append(err)

    t = threading.Thread(target=call)
    t.start()
    t.join()
    assert len(errors) == 1 and "belongs to thread" in str(errors[0])


def _next_logits(rt, image: np.ndarray, question: str, prefix: list[int]) -> np.ndarray:
    """Logits after the prompt and ``prefix`` (one prefill), to tell a near-tie from a real divergence."""
    embeds = rt.prompt_embeddings(prompts.vqa_prompt(question), image)
    if prefix:
        embeds = np.concatenate([embeds, np.asarray(rt.embed_table[prefix], np.float32)])
    m, n = rt.model_info, len(embeds)
    cap = math.ceil(n / 64) * 64
    pos = np.arange(n, dtype=np.int64)
    cache_in = np.zeros((m["num_layers"], 2, 1, m["num_key_value_heads"], cap, m["head_dim"]), np.float32)
    return rt.backend.run(
        "llm",
        {
            "inputs_embeds": embeds[None],
            "position_ids": pos[None],
            "attention_mask": decode_mask(pos, cap),
            "kv_cache": cache_in,
        },
    )["logits"][0]


def test_pipelines_end_to_end(engines: tuple[str, Path], trt_runtime, ort_runtime) -> None:
    precision = engines[0]
    noise = ort_runtime.initial_latents(5)
    for task in ("generate", "edit"):
        args = ("a blue triangle at the top",) if task == "generate" else (_scene(), "make the square green")
        ref = getattr(ort_runtime, task)(*args, steps=4, latents=noise).image
        out = getattr(trt_runtime, task)(*args, steps=4, latents=noise).image
        psnr = _psnr(ref, out)
        print(f"{precision} {task}: PSNR {psnr:.2f} dB")
        assert psnr >= MIN_PSNR_DB[precision], (task, psnr)

    question = "what colour is the square?"
    ref = ort_runtime.ask(_scene(), question, max_new_tokens=12)
    out = trt_runtime.ask(_scene(), question, max_new_tokens=12)
    print(f"{precision} answer: ort {ref.token_ids} trt {out.token_ids}")
    if precision == "fp32" or ref.token_ids == out.token_ids:
        assert out.token_ids == ref.token_ids
        return
    # fp16 may flip a near-tie of the random tiny model; anything else is a real divergence.
    pairs = zip(ref.token_ids, out.token_ids, strict=False)
    i = next((k for k, (a, b) in enumerate(pairs) if a != b), min(len(ref.token_ids), len(out.token_ids)))
    logits = _next_logits(ort_runtime, _scene(), question, ref.token_ids[:i])
    top2 = np.sort(logits)[-2:]
    margin = top2[1] - top2[0]
    assert margin <= 1e-2 * float(np.abs(logits).max()), f"diverged at token {i} without a near-tie"


# ------------------------------------------------------------------------------------------- int8
#: An INT8 engine of a QDQ graph against onnxruntime running the same QDQ graph: the Q/DQ scales are the
#: graph's, so only fp16 rounding and the order of the int8 arithmetic differ (a first estimate).
INT8_MIN_COSINE = 0.99


@pytest.fixture(scope="module")
def int8_export(gpu: tuple[str, str], tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny export with every graph forced to its QDQ (TensorRT-buildable) candidate."""
    import shutil

    from mobile_o_ros.export.quantize import quantize_export
    from mobile_o_ros.shapes.calibration import shapes_set

    out = tmp_path_factory.mktemp("int8") / "qdq"
    shutil.copytree(tiny_export, out)
    graphs = ["vision", "llm", "mcp", "dit", "vae_decoder"]
    quantize_export(
        out,
        shapes_set(items=2, render_size=128),
        force=graphs,
        modes=("int8-qdq",),
        steps=2,
        min_seconds=0.0,
        log=lambda s: None,
    )
    return out


def test_int8_engines_match_onnxruntime(int8_export: Path, tmp_path: Path) -> None:
    from mobile_o_ros.runtime.engine import MobileORuntime

    builder.build_engines(int8_export, tmp_path, precision="fp16", target="orin-nano")
    entries = cache.load_engine_manifest(tmp_path)["engines"]
    assert all(e["int8"] for e in entries.values()) and len(entries) == 5
    ort = MobileORuntime.load(int8_export, backend="onnxruntime")
    trt = MobileORuntime.load(int8_export, backend="tensorrt", engine_dir=tmp_path, precision="fp16")
    failures = []
    try:
        for graph, feeds in _graph_feeds(ort).items():
            ref, out = ort.backend.run(graph, feeds), trt.backend.run(graph, feeds)
            for name, r in ref.items():
                m = _metrics(r, out[name])
                line = f"int8 {graph}/{name}: cosine {m['cosine']:.6f} max_abs {m['max_abs']:.3e}"
                print(line)
                if m["cosine"] < INT8_MIN_COSINE:
                    failures.append(line)
    finally:
        trt.close()
    assert not failures, "\n".join(failures)
