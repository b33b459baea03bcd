"""Export tier: the PyTorch reference model of Mobile-O (needs torch, transformers, diffusers, timm)."""
