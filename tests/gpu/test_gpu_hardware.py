"""The measuring tools on the GPU (``yoco_core.perf.hardware``): the ceilings that achieved
rates are reported against are physically plausible, and ``Clock`` measures GPU time."""
from __future__ import annotations

import time

import pytest
import torch

from yoco_core.perf.hardware import Clock, measure_ceilings

pytestmark = pytest.mark.gpu


def test_ceilings_are_plausible(device):
    """The bf16 matmul rate (8192^3) between 1 and 5000 TFLOP/s, the device copy between 0.1 and
    20 TB/s (read + written): what any current GPU gives, and a timer or byte count off by a
    factor of 1000 does not."""
    c = measure_ceilings(device, torch.bfloat16)
    print(f"ceilings on {torch.cuda.get_device_name(device)}: bf16 matmul {c.matmul_tflops:.0f} TFLOP/s, "
          f"copy {c.copy_tbs:.2f} TB/s")
    assert c.matmul_n == 8192
    assert 1 < c.matmul_tflops < 5000 and 0.1 < c.copy_tbs < 20


def test_clock_measures_gpu_time(device):
    """CUDA events around queued work time that work: about what the host waits for it."""
    a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    clock = Clock(device)

    def work():
        for _ in range(200):
            a @ a

    work()
    clock.sync()
    t0 = time.perf_counter()
    start = clock.mark()
    work()
    end = clock.mark()
    gpu = clock.seconds(start, end)               # waits for the end event
    wall = time.perf_counter() - t0
    assert 0.5 * wall < gpu <= wall * 1.01 + 1e-3, (gpu, wall)
