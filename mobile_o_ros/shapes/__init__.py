"""The embedded default model: a small Mobile-O trained on a synthetic shapes world, and its self-test.

- :mod:`.world`: the seeded shapes world (scenes, renders, captions, questions, edits, train/held-out split);
- :mod:`.detector`: a classical OpenCV detector and GenEval-style scoring of generated and edited images;
- :mod:`.train`: the staged CPU training recipe (``mobile-o train-demo``);
- :mod:`.selftest`: task-level scores on held-out data (``mobile-o selftest``).

The trained checkpoint ships in ``mobile_o_ros/models/shapes`` (see its ``MODEL_CARD.md``).
"""

from __future__ import annotations

from mobile_o_ros.model_store import embedded_model_dir

__all__ = ["embedded_model_dir"]
