"""Answers stop at the tokenizer's eos token (tokenizer_config.json), in the reference and in the runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mobile_o_ros import prompts
from mobile_o_ros.reference.checkpoint import load_checkpoint
from mobile_o_ros.reference.pipelines import ReferencePipeline, answer_stop_id, tokenizer_image_token

QUESTION = "what colour is the square?"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, size=(200, 260, 3), dtype=np.uint8)


def test_stop_id_is_the_tokenizer_eos_with_im_end_as_fallback(tiny_loaded) -> None:
    tok = tiny_loaded.tokenizer
    im_end = tok.convert_tokens_to_ids(prompts.IM_END)
    assert tok.eos_token == prompts.IM_END and answer_stop_id(tok) == im_end

    class NoEos:
        eos_token_id = None

        def convert_tokens_to_ids(self, token: str) -> int:
            return tok.convert_tokens_to_ids(token)

    assert answer_stop_id(NoEos()) == im_end


def _first_emits(answers: dict[int, list[int]], tokenizer) -> dict[int, tuple[int, int]]:
    """token -> (seed, k): the first seed whose answer first emits ``token`` at position k >= 1.

    Only tokens with a non-ASCII character (byte-level BPE pieces like ``Ġs``) qualify: made the eos token,
    such a piece cannot split the ASCII prompt, so the prompt's ids stay the same.
    """
    out: dict[int, tuple[int, int]] = {}
    for seed, ids in answers.items():
        for k in range(1, len(ids)):
            if ids[k] not in ids[:k] and not tokenizer.convert_ids_to_tokens(ids[k]).isascii():
                out.setdefault(ids[k], (seed, k))
    return out


@pytest.mark.slow
def test_answer_stops_at_another_eos_token(
    tiny_checkpoint: Path, tiny_loaded, tiny_runtime, image: np.ndarray, tmp_path: Path
) -> None:
    """eos_token set to a token both backends sample mid-answer: the reference and the export stop there."""
    from mobile_o_ros.export.onnx_export import export_model
    from mobile_o_ros.runtime.engine import MobileORuntime

    n, seeds = tiny_loaded.config.defaults.max_new_tokens, range(12)
    pipe = ReferencePipeline(tiny_loaded.model, tiny_loaded.tokenizer)
    ref_full = {s: pipe.ask(image, QUESTION, n, temperature=1.0, seed=s).token_ids for s in seeds}
    rt_full = {s: tiny_runtime.ask(image, QUESTION, n, temperature=1.0, seed=s).token_ids for s in seeds}
    assert all(len(ids) == n for ids in [*ref_full.values(), *rt_full.values()])  # no <|im_end|> drawn
    ref_at, rt_at = (
        _first_emits(ref_full, tiny_loaded.tokenizer),
        _first_emits(rt_full, tiny_loaded.tokenizer),
    )
    stop_id = min(set(ref_at) & set(rt_at))
    stop = tiny_loaded.tokenizer.convert_ids_to_tokens(stop_id)

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the map, when present, wins
        config = json.loads((ckpt / name).read_text())
        config["eos_token"] = stop
        (ckpt / name).write_text(json.dumps(config))

    loaded = load_checkpoint(ckpt)
    assert loaded.tokenizer.eos_token_id == stop_id
    prompt = prompts.vqa_prompt(QUESTION)
    assert tokenizer_image_token(prompt, loaded.tokenizer) == tokenizer_image_token(
        prompt, tiny_loaded.tokenizer
    )
    seed, k = ref_at[stop_id]
    ref = ReferencePipeline(loaded.model, loaded.tokenizer).ask(
        image, QUESTION, n, temperature=1.0, seed=seed
    )
    assert ref.token_ids == ref_full[seed][:k]

    export_model(loaded, tmp_path / "export", lm_head_chunks=2)
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["special_tokens"]["eos"] == stop_id
    assert manifest["special_tokens"]["im_end"] == loaded.tokenizer.convert_tokens_to_ids(prompts.IM_END)
    runtime = MobileORuntime.load(tmp_path / "export", backend="onnxruntime")
    seed, k = rt_at[stop_id]
    try:
        got = runtime.ask(image, QUESTION, n, temperature=1.0, seed=seed)
    finally:
        runtime.close()
    assert got.token_ids == rt_full[seed][:k] and got.num_tokens == k
