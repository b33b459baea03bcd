"""The embedded default model: a small Mobile-O trained on a synthetic shapes world, and its self-test.

- :mod:`.world`: the seeded shapes world (scenes, renders, captions, questions, edits, train/held-out split);
- :mod:`.detector`: a classical OpenCV detector and GenEval-style scoring of generated and edited images;
- :mod:`.train`: the staged CPU training recipe (``mobile-o train-demo``);
- :mod:`.selftest`: task-level scores on held-out data (``mobile-o selftest``).

The trained checkpoint ships in ``mobile_o_ros/models/shapes`` (see its ``MODEL_CARD.md``).
"""

from __future__ import annotations

from pathlib import Path


def embedded_model_dir() -> Path:
    """The folder of the shipped shapes checkpoint (config.json, model.safetensors, tokenizer files).

    The folder may be absent in a source tree where the model has not been trained yet; callers check
    ``(embedded_model_dir() / "model.safetensors").is_file()``.
    """
    return Path(__file__).resolve().parent.parent / "models" / "shapes"
