"""GPU correctness tests (``python3 -m pytest -q -m gpu tests/gpu``); a package, so that its
``conftest`` and modules keep their own names beside ``tests/conftest.py``."""
