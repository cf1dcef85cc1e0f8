"""The device every GPU test runs on: CUDA, or the test is skipped."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch.device("cuda")


@pytest.fixture
def gen(device) -> torch.Generator:
    """The random inputs of one test, the same on every run."""
    return torch.Generator(device=device).manual_seed(0)
