"""Kernel families, each in its own folder with a plain-PyTorch reference beside the fast path."""
