"""Prompt templates and special tokens of the Mobile-O reference.

Shared by the PyTorch reference and the torch-free runtime, so both build byte-identical prompts.
"""

from __future__ import annotations

SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE_PLACEHOLDER = "<image>"
IMAGE_TOKEN_INDEX = -200  # placeholder id spliced by the host, never an embedding row
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
EXTRA_SPECIAL_TOKENS = ("[IMG]", "[/IMG]", IMAGE_PLACEHOLDER)

GENERATION_PREFIX = "Please generate image based on the following caption: "
EDIT_PREFIX = "Please edit the provided image according to the following description: "


def chat_prompt(user_content: str, system: str = SYSTEM_PROMPT) -> str:
    """Render one user turn in the ``qwen_2`` template, ending at the open assistant header."""
    return (
        f"{IM_START}system\n{system}{IM_END}\n{IM_START}user\n{user_content}{IM_END}\n{IM_START}assistant\n"
    )


def generation_prompt(caption: str) -> str:
    """Text-to-image prompt: the generation prefix, then the caption."""
    return chat_prompt(GENERATION_PREFIX + caption)


def edit_prompt(instruction: str) -> str:
    """Editing prompt: the image placeholder right after the user header, then the instruction."""
    return chat_prompt(f"{IMAGE_PLACEHOLDER}\n{EDIT_PREFIX}{instruction}")


def vqa_prompt(question: str) -> str:
    """Visual question prompt: ``<image>`` newline question."""
    return chat_prompt(f"{IMAGE_PLACEHOLDER}\n{question}")
