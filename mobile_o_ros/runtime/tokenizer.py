"""Host-side text tokenisation for the Qwen2 LLM, built on ``tokenizers`` only.

Loads ``tokenizer.json`` when present, otherwise rebuilds the fast tokenizer from a slow checkpoint
(``vocab.json`` + ``merges.txt`` + added tokens) the way transformers' ``Qwen2Converter`` does. Also
implements LLaVA's ``tokenizer_image_token`` and the host-side embedding splice of the 256 image tokens.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

IMAGE_PLACEHOLDER = "<image>"
IMAGE_TOKEN_INDEX = -200
DEFAULT_EOS = "<|im_end|>"
_QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _added_tokens(directory: Path, config: dict[str, Any]) -> list[tuple[int, AddedToken]]:
    """Added tokens of a slow checkpoint, by id: ``added_tokens_decoder`` or else ``added_tokens.json``."""
    decoder = config.get("added_tokens_decoder")
    if decoder:
        return sorted(
            (
                int(i),
                AddedToken(
                    t["content"],
                    single_word=t.get("single_word", False),
                    lstrip=t.get("lstrip", False),
                    rstrip=t.get("rstrip", False),
                    normalized=t.get("normalized", False),
                    special=t.get("special", True),
                ),
            )
            for i, t in decoder.items()
        )
    path = directory / "added_tokens.json"
    if not path.exists():
        return []
    return sorted(
        (int(i), AddedToken(c, normalized=False, special=True)) for c, i in _read_json(path).items()
    )


def build_qwen2_tokenizer(directory: str | Path) -> Tokenizer:
    """Build a fast tokenizer from slow Qwen2 files, like transformers' ``Qwen2Converter``."""
    directory = Path(directory)
    config_path = directory / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.exists() else {}
    bpe = models.BPE.from_file(
        str(directory / "vocab.json"),
        str(directory / "merges.txt"),
        dropout=None,
        unk_token=None,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
        byte_fallback=False,
    )
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    for expected_id, token in _added_tokens(directory, config):
        existing = tok.token_to_id(token.content)
        if existing is None:
            (tok.add_special_tokens if token.special else tok.add_tokens)([token])
            existing = tok.token_to_id(token.content)
        if existing != expected_id:
            raise ValueError(
                f"added token {token.content!r} got id {existing}, checkpoint says {expected_id}"
            )
    return tok


class TextTokenizer:
    """Qwen2 tokenizer for the runtime: encode/decode, LLaVA image-token splitting and embedding splicing."""

    def __init__(self, tokenizer: Tokenizer, eos_token: str = DEFAULT_EOS) -> None:
        """Wrap a ``tokenizers.Tokenizer``; ``eos_token`` ends generation (``<|im_end|>`` for Qwen2 chat)."""
        self._tok = tokenizer
        self.eos_token = eos_token
        self.eos_id: int = self.token_id(eos_token)
        added = tokenizer.get_added_tokens_decoder()
        self._added: dict[int, str] = {i: t.content for i, t in added.items()}
        self.special_ids: frozenset[int] = frozenset(i for i, t in added.items() if t.special)

    @staticmethod
    def _eos_from_config(directory: Path) -> str:
        path = directory / "tokenizer_config.json"
        eos = _read_json(path).get("eos_token") if path.exists() else None
        eos = eos or DEFAULT_EOS
        return eos["content"] if isinstance(eos, dict) else eos

    @classmethod
    def from_file(cls, path: str | Path) -> TextTokenizer:
        """Load a ``tokenizer.json`` (eos from a ``tokenizer_config.json`` beside it, else ``<|im_end|>``)."""
        path = Path(path)
        return cls(Tokenizer.from_file(str(path)), cls._eos_from_config(path.parent))

    @classmethod
    def from_dir(cls, directory: str | Path) -> TextTokenizer:
        """Load a tokenizer folder: ``tokenizer.json`` if present, else the slow Qwen2 files."""
        directory = Path(directory)
        if (directory / "tokenizer.json").exists():
            return cls.from_file(directory / "tokenizer.json")
        return cls(build_qwen2_tokenizer(directory), cls._eos_from_config(directory))

    @property
    def vocab_size(self) -> int:
        """``len(tokenizer)``: BPE vocabulary plus added tokens."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without any added special tokens (Qwen2 has no BOS)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int:
        """Id of a single vocabulary or added token; ``KeyError`` if unknown."""
        idx = self._tok.token_to_id(token)
        if idx is None:
            raise KeyError(f"token {token!r} not in vocabulary")
        return idx

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes one token contributes to the decoded text (an added token: its UTF-8 content)."""
        token_id = int(token_id)
        if token_id in self._added:
            return self._added[token_id].encode("utf-8")
        piece = self._tok.id_to_token(token_id)
        if piece is None:
            raise KeyError(f"token id {token_id} out of range")
        return bytes(_BYTE_DECODER[ch] for ch in piece)

    def split_image_prompt(self, prompt: str) -> list[int]:
        """LLaVA ``tokenizer_image_token``: tokenise the chunks around each ``<image>``, joined by -200."""
        ids: list[int] = []
        for i, chunk in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
            if i:
                ids.append(IMAGE_TOKEN_INDEX)
            ids.extend(self.encode(chunk))
        return ids

    def splice_image_embeddings(
        self, ids: Sequence[int] | np.ndarray, embed_table: np.ndarray, image_embeds: np.ndarray | None
    ) -> np.ndarray:
        """Same as the module-level :func:`splice_image_embeddings`."""
        return splice_image_embeddings(ids, embed_table, image_embeds)


def splice_image_embeddings(
    ids: Sequence[int] | np.ndarray, embed_table: np.ndarray, image_embeds: np.ndarray | None
) -> np.ndarray:
    """Look up token rows and put the image embeddings where the -200 placeholder is -> [L - 1 + N, D].

    The result is at least fp32: rows of an fp16 table are upcast, image embeddings are never rounded.

    Raises ``ValueError`` for a placeholder without an image, an image without a placeholder, more than one
    placeholder, or token ids outside the table.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    dtype = np.promote_types(embed_table.dtype, np.float32)
    positions = np.flatnonzero(ids == IMAGE_TOKEN_INDEX)
    text = np.delete(ids, positions)
    if text.size and (text.min() < 0 or text.max() >= embed_table.shape[0]):
        raise ValueError(f"token ids must lie in [0, {embed_table.shape[0]}), got {text.min()}..{text.max()}")
    if image_embeds is None:
        if positions.size:
            raise ValueError("prompt has an image placeholder (-200) but no image embeddings were given")
        return embed_table[ids].astype(dtype)
    image_embeds = np.asarray(image_embeds)
    if image_embeds.ndim == 3 and image_embeds.shape[0] == 1:
        image_embeds = image_embeds[0]
    if image_embeds.ndim != 2 or image_embeds.shape[1] != embed_table.shape[1]:
        raise ValueError(f"image embeddings must be [N, {embed_table.shape[1]}], got {image_embeds.shape}")
    if positions.size != 1:
        raise ValueError(
            f"expected exactly one image placeholder (-200) for one image, found {positions.size}"
        )
    p = int(positions[0])
    return np.concatenate(
        [
            embed_table[ids[:p]].astype(dtype),
            image_embeds.astype(dtype),
            embed_table[ids[p + 1 :]].astype(dtype),
        ]
    )


class IncrementalDecoder:
    """Streaming detokeniser: ``add(token_id)`` returns the newly completed text, never half a character.

    Works on the byte level (Qwen2's byte-level BPE), so the concatenation of all pieces plus ``flush()``
    equals ``tokenizer.decode(all_ids)`` for valid UTF-8 output.
    """

    def __init__(self, tokenizer: TextTokenizer, skip_special_tokens: bool = True) -> None:
        """Start an empty stream."""
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._cache: dict[int, bytes] = {}
        self.ids: list[int] = []

    def _bytes(self, token_id: int) -> bytes:
        if self._skip and token_id in self._tokenizer.special_ids:
            return b""
        if token_id not in self._cache:
            self._cache[token_id] = self._tokenizer.token_bytes(token_id)
        return self._cache[token_id]

    def add(self, token_id: int) -> str:
        """Feed one generated id; returns the text it completes ('' while a character is incomplete)."""
        self.ids.append(int(token_id))
        return self._utf8.decode(self._bytes(int(token_id)))

    def flush(self) -> str:
        """End of stream: returns any pending incomplete bytes (as U+FFFD)."""
        return self._utf8.decode(b"", final=True)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / ByteLevel byte -> printable character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}
