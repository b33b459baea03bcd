"""Tiny Qwen2 tokenizer: HF slow / HF fast / runtime TextTokenizer agree; splicing; torch-free runtime."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from mobile_o_ros import prompts
from mobile_o_ros.reference.tiny_tokenizer import SPECIAL_TOKENS, build_tiny_tokenizer
from mobile_o_ros.runtime.tokenizer import (
    IMAGE_TOKEN_INDEX,
    IncrementalDecoder,
    TextTokenizer,
    splice_image_embeddings,
)

# The tests marked torch compare with transformers' tokenizers; the others need neither.
pytestmark = pytest.mark.runtime

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = [
    "a red cube left of a blue sphere",
    "Three yellow cats on a table.",
    "café crème brûlée, naïve façade",
    "cafe\u0301 (decomposed accent)",
    "日本語のテキスト 🙂 emoji",
    "  leading spaces and\ttabs\nnew lines  ",
    "Ünïcödé ÄÖÜ ß — “quotes” …",
    "",
]
QUESTIONS = [
    "What is in the image?",
    "How many dogs are there?",
    "Is the ball green? Answer yes or no.",
    "¿Qué es?",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_tok")
    build_tiny_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def slow_only_dir(tok_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_tok_slow")
    for name in (
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "added_tokens.json",
        "special_tokens_map.json",
    ):
        shutil.copy(tok_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def hf(tok_dir: Path):
    transformers = pytest.importorskip("transformers")
    slow = transformers.AutoTokenizer.from_pretrained(str(tok_dir), use_fast=False)
    fast = transformers.AutoTokenizer.from_pretrained(str(tok_dir), use_fast=True)
    return slow, fast


def _all_prompts() -> list[str]:
    out = [prompts.generation_prompt(c) for c in CAPTIONS]
    out += [prompts.edit_prompt(c) for c in CAPTIONS]
    out += [prompts.vqa_prompt(q) for q in QUESTIONS + CAPTIONS]
    return out + [prompts.chat_prompt(q) for q in QUESTIONS]


def test_build_is_deterministic(tok_dir: Path, tmp_path: Path) -> None:
    size = build_tiny_tokenizer(tmp_path)
    assert 900 <= size <= 1100
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (tok_dir / name).read_bytes(), name


@pytest.mark.torch
def test_hf_loads_slow_and_fast(hf, tok_dir: Path) -> None:
    slow, fast = hf
    assert type(slow).__name__ == "Qwen2Tokenizer"
    assert type(fast).__name__ == "Qwen2TokenizerFast"
    size = TextTokenizer.from_dir(tok_dir).vocab_size
    assert len(slow) == len(fast) == size
    assert slow.eos_token == fast.eos_token == prompts.IM_END
    assert slow.pad_token == fast.pad_token == prompts.ENDOFTEXT
    assert slow.bos_token is None and slow.model_max_length == 2048


@pytest.mark.torch
def test_special_tokens_are_single_ids_in_qwen_order(hf, tok_dir: Path) -> None:
    slow, fast = hf
    ours = TextTokenizer.from_dir(tok_dir)
    ids = [ours.token_id(t) for t in SPECIAL_TOKENS]
    first = ids[0]
    assert ids == list(range(first, first + 6))
    assert first + 6 == ours.vocab_size  # the six specials close the vocabulary, as 151643..151648 do
    for token, idx in zip(SPECIAL_TOKENS, ids, strict=True):
        assert slow(token).input_ids == fast(token).input_ids == ours.encode(token) == [idx]
    assert ours.eos_id == slow.eos_token_id == ours.token_id(prompts.IM_END)


@pytest.mark.torch
def test_three_implementations_agree(hf, tok_dir: Path, slow_only_dir: Path) -> None:
    slow, fast = hf
    ours = TextTokenizer.from_dir(tok_dir)
    rebuilt = TextTokenizer.from_dir(slow_only_dir)
    from_file = TextTokenizer.from_file(tok_dir / "tokenizer.json")
    for prompt in _all_prompts():
        expected = slow(prompt).input_ids
        assert fast(prompt).input_ids == expected, prompt
        assert ours.encode(prompt) == rebuilt.encode(prompt) == from_file.encode(prompt) == expected, prompt
        for skip in (True, False):
            text = slow.decode(expected, skip_special_tokens=skip)
            assert ours.decode(expected, skip_special_tokens=skip) == text
            assert rebuilt.decode(expected, skip_special_tokens=skip) == text
    assert rebuilt.eos_id == ours.eos_id and rebuilt.vocab_size == ours.vocab_size


def _tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    """LLaVA's ``tokenizer_image_token``, written out (BOS handling included) for the HF tokenizer."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    input_ids: list[int] = []
    offset = 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(chunks[0][0])
    separated = [x for chunk in chunks for x in (chunk, [IMAGE_TOKEN_INDEX] * (offset + 1))][:-1]
    for part in separated:
        input_ids.extend(part[offset:])
    return input_ids


@pytest.mark.torch
def test_split_image_prompt_matches_llava(hf, tok_dir: Path) -> None:
    slow, _ = hf
    ours = TextTokenizer.from_dir(tok_dir)
    extra = ["<image>", "<image><image>", "a<image>b", "<image>\n<image>\nboth", "no image at all"]
    for prompt in _all_prompts() + extra:
        assert ours.split_image_prompt(prompt) == _tokenizer_image_token(prompt, slow), prompt
    ids = ours.split_image_prompt(prompts.vqa_prompt("What is it?"))
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    assert ours.token_id("<image>") not in ids


def test_splice_lengths_and_rows(tok_dir: Path) -> None:
    ours = TextTokenizer.from_dir(tok_dir)
    rng = np.random.default_rng(0)
    table = rng.standard_normal((ours.vocab_size, 16)).astype(np.float32)
    image = rng.standard_normal((256, 16)).astype(np.float32)
    ids = ours.split_image_prompt(prompts.edit_prompt("make it red"))
    out = splice_image_embeddings(ids, table, image)
    p = ids.index(IMAGE_TOKEN_INDEX)
    assert out.shape == (len(ids) - 1 + 256, 16)
    np.testing.assert_array_equal(out[:p], table[ids[:p]])
    np.testing.assert_array_equal(out[p : p + 256], image)
    np.testing.assert_array_equal(out[p + 256 :], table[ids[p + 1 :]])
    np.testing.assert_array_equal(ours.splice_image_embeddings(ids, table, image[None]), out)
    text_ids = ours.split_image_prompt(prompts.generation_prompt("a cat"))
    np.testing.assert_array_equal(splice_image_embeddings(text_ids, table, None), table[text_ids])


def test_splice_errors(tok_dir: Path) -> None:
    ours = TextTokenizer.from_dir(tok_dir)
    table = np.zeros((ours.vocab_size, 8), np.float32)
    image = np.zeros((256, 8), np.float32)
    with_image = ours.split_image_prompt(prompts.vqa_prompt("what?"))
    without = ours.split_image_prompt(prompts.generation_prompt("a cat"))
    with pytest.raises(ValueError):
        splice_image_embeddings(with_image, table, None)
    with pytest.raises(ValueError):
        splice_image_embeddings(without, table, image)
    with pytest.raises(ValueError):
        splice_image_embeddings([1, IMAGE_TOKEN_INDEX, 2, IMAGE_TOKEN_INDEX], table, image)
    with pytest.raises(ValueError):
        splice_image_embeddings(with_image, table, np.zeros((256, 9), np.float32))
    with pytest.raises(ValueError):
        splice_image_embeddings([ours.vocab_size], table, None)


@pytest.mark.torch
def test_incremental_decoder_reassembles(hf, tok_dir: Path) -> None:
    slow, _ = hf
    ours = TextTokenizer.from_dir(tok_dir)
    for text in CAPTIONS + QUESTIONS + ["🙂🙂 日本", "x" + prompts.IM_END + "y"]:
        ids = ours.encode(text)
        for skip in (True, False):
            decoder = IncrementalDecoder(ours, skip_special_tokens=skip)
            pieces = [decoder.add(i) for i in ids]
            tail = decoder.flush()
            assert "\ufffd" not in "".join(pieces)
            assert "".join(pieces) + tail == ours.decode(ids, skip_special_tokens=skip)
            assert ours.decode(ids, skip_special_tokens=skip) == slow.decode(ids, skip_special_tokens=skip)
            assert decoder.ids == ids
    # a multi-byte character split over byte tokens yields nothing until it is complete
    emoji_ids = ours.encode("🙂")
    assert len(emoji_ids) > 1
    decoder = IncrementalDecoder(ours)
    assert [decoder.add(i) for i in emoji_ids] == [""] * (len(emoji_ids) - 1) + ["🙂"]


def test_nfc_normalisation(tok_dir: Path) -> None:
    ours = TextTokenizer.from_dir(tok_dir)
    decomposed = "cafe\u0301"
    assert ours.encode(decomposed) == ours.encode(unicodedata.normalize("NFC", decomposed))


def test_runtime_imports_without_torch(tok_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    for name in ("torch", "transformers", "diffusers", "PIL"):
        (blocker / f"{name}.py").write_text(f"raise ImportError('{name} is blocked in the runtime tier')\n")
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from mobile_o_ros.runtime import preprocess, sampling, scheduler, tokenizer
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("blocker did not work")
        s = scheduler.FlowDPMSolverScheduler()
        s.set_timesteps(20)
        assert s.timesteps[0] == 999 and s.timesteps[-1] == 136
        x = np.zeros((1, 32, 16, 16), np.float32)
        for t in s.timesteps:
            x = s.step(np.ones_like(x), int(t), x)
        rng, seed = sampling.make_rng(None)
        token = sampling.sample_next_token(np.arange(10, dtype=np.float32), 0.8, 0.9, 5, rng)
        assert 0 <= token < 10
        pixels = preprocess.preprocess_image(preprocess.to_rgb(np.zeros((48, 64, 3), np.uint8), "bgr8"))
        assert pixels.shape == (1, 3, 1024, 1024)
        tok = tokenizer.TextTokenizer.from_dir({str(tok_dir)!r})
        ids = tok.split_image_prompt("<|im_start|>user\\n<image>\\nhi<|im_end|>")
        assert ids.count(-200) == 1
        assert set(sys.modules).isdisjoint(("torch", "transformers", "diffusers", "PIL")), "heavy import"
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)])}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
