"""Export tier: ONNX graphs of Mobile-O's parts, their manifest, and parity against the reference."""
