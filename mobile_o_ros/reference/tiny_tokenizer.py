"""A tiny, deterministic Qwen2-style tokenizer for tiny checkpoints (:mod:`.tiny`) and the shapes model.

Needs only ``tokenizers`` (no torch).

The layout mirrors the real Qwen2 / Mobile-O tokenizer: byte-level BPE with Qwen2's split regex and an NFC
normaliser, then the special tokens ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` right after the BPE
vocabulary, then ``[IMG]``, ``[/IMG]``, ``<image>`` (real ids 151643..151648). The folder loads with
``transformers.AutoTokenizer`` as a slow ``Qwen2Tokenizer`` and as a fast one.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer

from mobile_o_ros import prompts

#: Qwen2's pre-tokenisation regex (transformers ``Qwen2Converter`` / ``PRETOKENIZE_REGEX``).
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
#: Special tokens in id order: Qwen2's three, then the three Mobile-O training adds.
SPECIAL_TOKENS = (prompts.ENDOFTEXT, prompts.IM_START, prompts.IM_END, *prompts.EXTRA_SPECIAL_TOKENS)

_COLOURS = (
    "red",
    "green",
    "blue",
    "yellow",
    "black",
    "white",
    "orange",
    "purple",
    "pink",
    "brown",
    "gray",
    "cyan",
)
_SHAPES = ("cube", "sphere", "cylinder", "cone", "circle", "square", "triangle", "star", "box", "ball")
_OBJECTS = ("cat", "dog", "car", "bus", "cup", "chair", "table", "robot", "apple", "bird", "person", "book")
_POSITIONS = ["left of", "right of", "above", "below", "on top of", "next to", "behind", "in front of"]
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_QUESTIONS = [
    "What is in the image?",
    "What color is the {o}?",
    "How many {o}s are there?",
    "Is there a {c} {o}?",
    "Where is the {o}?",
    "Describe the image in detail.",
    "Answer with yes or no.",
]
_BASE_TEXT = [
    prompts.SYSTEM_PROMPT,
    prompts.GENERATION_PREFIX,
    prompts.EDIT_PREFIX,
    "Yes. No. yes no",
    "what is how many where which who why the a an of and with in on is are there this that it",
    "Make the sky blue. Remove the cat. Add a hat. Change the color of the car to red.",
    "A photo of a cat sitting on a table. An image of two dogs playing in the park.",
    "0 1 2 3 4 5 6 7 8 9 10 100 2024",
    "system\nYou are a helpful assistant.\nuser\nassistant\n",
]
_COMMON_WORDS = """
about above across after again against all almost alone along already also although always among amount
animal another answer any anything appear area around arrive art ask at away back background ball band bank
base be beach bear beautiful because become bed been before begin behind being believe bell beside best
better between big bike black block blue board boat body book both bottom bowl boy bread break bridge
bright bring broken brother build building but buy by cake call camera can candle cap car card care carry
case castle catch ceiling center chair change child city class clean clear clock close cloud coat coffee
cold come computer cook corner could count country cover cow cross crowd cut dark day deep desk detail did
different dinner do does door down draw dress drink drive during each early earth eat edge egg elephant
empty end engine enough even evening every example eye face fall family far farm fast father field fill
find fire first fish floor flower fly follow food foot for forest form found frame free fresh friend from
front fruit full game garden gate girl give glass go gold good grass great ground group grow hair half hand
happy hard has hat have he head hear heavy help her here high hill him his hold hole home horse hot house
how huge ice idea if important inside into island jacket just keep key kind kitchen know lake lamp land
large last late laugh lay leaf learn leave leg less letter light like line lion little live long look low
machine made make man many map market may me mean meet metal middle might milk mirror moment money monkey
moon more morning most mother mountain mouse move much music must name near need never new night noise
north nothing now number ocean off office often old once only open or other our out outside over own page
paint pair paper park part pass pen pencil people picture piece place plane plant plate play point pole
pool poster pot put quiet quite rain read ready rear rest ride right ring river road rock roof room round
row run said same sand say school sea seat second see seem sell send set shadow shape sheep shelf ship shirt
shoe shop short should show side sign simple sing sit size sky sleep small smile snow so soft some
something sometimes song soon sound space speak stand start station stay step still stone stop store
story street strong such sun table take talk tall tea tell than thing think those through time tiny to
today together too top towel tower town toy train travel truck turn under up us use very view wait walk wall
want warm watch water wave way we wear weather were wheel when while whole wide will wind window winter
wood word work world would write year you young zebra zoo
"""


def _corpus(seed: int, n_sentences: int = 600) -> list[str]:
    """Built-in English corpus: fixed prompt text plus seeded synthetic captions, questions and answers."""
    rng = random.Random(seed)
    lines = [*_BASE_TEXT, *_COMMON_WORDS.split()]
    for _ in range(n_sentences):
        c, o, s = rng.choice(_COLOURS), rng.choice(_OBJECTS), rng.choice(_SHAPES)
        n, p = rng.choice(_NUMBERS), rng.choice(_POSITIONS)
        lines.append(f"a photo of {n} {c} {o}s {p} a {rng.choice(_COLOURS)} {s}.")
        lines.append(rng.choice(_QUESTIONS).format(o=o, c=c))
        lines.append(rng.choice(["Yes.", "No.", f"There are {n} {o}s.", f"The {o} is {c}."]))
    return lines


def qwen2_pipeline(tokenizer: Tokenizer) -> Tokenizer:
    """Install transformers ``Qwen2Converter``'s normaliser, pre-tokeniser, decoder and post-processor."""
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _special(content: str) -> AddedToken:
    return AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)


def _token_json(content: str) -> dict[str, object]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def build_tiny_tokenizer(
    out_dir: str | Path, vocab_size: int = 1000, seed: int = 0, extra_corpus: Sequence[str] = ()
) -> int:
    """Train a small byte-level BPE (Qwen2 layout) into ``out_dir``; returns ``len(tokenizer)``.

    ``vocab_size`` is the BPE vocabulary size before the six special tokens. ``extra_corpus`` adds text
    (e.g. a domain's captions and questions, so that its words become single tokens). Training is
    deterministic for a given ``(vocab_size, seed, extra_corpus)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = qwen2_pipeline(Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False)))
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([*_corpus(seed), *extra_corpus], trainer=trainer)
    bpe_size = tok.get_vocab_size(with_added_tokens=False)
    tok.add_special_tokens([_special(t) for t in SPECIAL_TOKENS])
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out), None)  # vocab.json + merges.txt

    ids = {t: bpe_size + i for i, t in enumerate(SPECIAL_TOKENS)}
    assert all(tok.token_to_id(t) == i for t, i in ids.items()), "special tokens must follow the BPE vocab"
    extra = [t for t in SPECIAL_TOKENS if t != prompts.ENDOFTEXT]
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): _token_json(t) for t, i in ids.items()},
        "additional_special_tokens": extra,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": prompts.IM_END,
        "errors": "replace",
        "model_max_length": 2048,
        "pad_token": prompts.ENDOFTEXT,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    special_map = {
        "additional_special_tokens": extra,
        "eos_token": _token_json(prompts.IM_END),
        "pad_token": _token_json(prompts.ENDOFTEXT),
    }
    for name, obj in (
        ("tokenizer_config.json", config),
        ("special_tokens_map.json", special_map),
        ("added_tokens.json", ids),
    ):
        (out / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return tok.get_vocab_size(with_added_tokens=True)
