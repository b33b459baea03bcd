"""Self-test a trained shapes model on torch and onnxruntime and write its MODEL_CARD.md.

Usage: python scripts/shapes_model_card.py [MODEL_DIR]   (default: the embedded mobile_o_ros/models/shapes)
"""

from __future__ import annotations

import sys
from pathlib import Path

from mobile_o_ros.shapes import embedded_model_dir
from mobile_o_ros.shapes.card import record_scores

if __name__ == "__main__":
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else embedded_model_dir()
    record_scores(model_dir)
    print(f"wrote {model_dir / 'MODEL_CARD.md'} and {model_dir / 'selftest_scores.json'}")
