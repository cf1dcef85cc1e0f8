"""Kernel families, each in its own folder with a plain-PyTorch reference beside the fast path;
``backend.py`` chooses between them (the ``YOCO_KERNEL_*`` variables, ``backend.override``)."""
