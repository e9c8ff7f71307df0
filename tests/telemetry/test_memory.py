"""Memory figures: RSS now vs the peak, and CUDA training peaks kept apart from evaluation's (over a
pretend allocator, and on a real device where there is one)."""

import pytest
import torch

from harness import telemetry
from harness.telemetry import CudaPeaks


def test_rss_gib_is_the_resident_memory_now_not_the_peak():
    before = telemetry.rss_gib()
    x = torch.ones(64 * 2**20)  # 256 MiB, written, so resident
    during = telemetry.rss_gib()
    del x  # a large block goes back to the OS at once
    after = telemetry.rss_gib()
    assert during - before == pytest.approx(0.25, abs=0.03)
    assert after - before == pytest.approx(0, abs=0.03)
    assert telemetry.peak_rss_gib() >= during - 1e-3


# ------------------------------------------------------------------------------ CUDA peaks


class FakeAllocator:
    """The torch.cuda calls CudaPeaks makes, over a pretend allocator: `use(n)` allocates n bytes."""

    def __init__(self):
        self.allocated = self.peak = self.reserved = self.peak_reserved = 0

    def use(self, n):
        self.allocated += n
        self.reserved = max(self.reserved, self.allocated)
        self.peak, self.peak_reserved = max(self.peak, self.allocated), max(self.peak_reserved, self.reserved)

    def free(self, n):
        self.allocated -= n  # the cache keeps the blocks reserved

    def empty_cache(self):
        self.reserved = self.allocated

    def reset_peak_memory_stats(self, device=None):
        self.peak, self.peak_reserved = self.allocated, self.reserved

    def install(self, monkeypatch):
        for name, fn in (("max_memory_allocated", lambda d=None: self.peak),
                         ("max_memory_reserved", lambda d=None: self.peak_reserved),
                         ("memory_allocated", lambda d=None: self.allocated),
                         ("empty_cache", self.empty_cache), ("reset_peak_memory_stats", self.reset_peak_memory_stats)):
            monkeypatch.setattr(torch.cuda, name, fn)


def test_cuda_peaks_keep_evaluation_out_of_the_training_peak(monkeypatch):
    gib = 1024**3
    fake = FakeAllocator()
    fake.install(monkeypatch)
    fake.use(3 * gib)            # the model, loaded before the window starts
    fake.use(9 * gib)
    fake.free(9 * gib)           # model loading's scratch, still cached
    peaks = CudaPeaks(torch.device("cuda"))
    peaks.start()                # empties the cache: loading's 12 GiB reserved must not count
    fake.use(4 * gib)
    fake.free(4 * gib)           # a training step: peak 7 GiB
    with peaks.evaluation():
        fake.use(10 * gib)       # evaluation batches: peak 13 GiB, cached afterwards
        fake.free(10 * gib)
    fake.use(5 * gib)            # training after the evaluation: 8 GiB, in a freshly emptied cache
    row = telemetry.memory_row(torch.device("cuda"), peaks)
    assert (row["train/cuda_allocated_gib"], row["train/cuda_peak_allocated_gib"]) == (8, 8)
    fake.free(5 * gib)
    s = peaks.summary()
    assert (s["cuda_peak_allocated_gib"], s["cuda_peak_reserved_gib"]) == (8, 8)
    assert (s["cuda_eval_peak_allocated_gib"], s["cuda_eval_peak_reserved_gib"]) == (13, 13)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peaks_on_a_real_device():
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    peaks = CudaPeaks(device)
    peaks.start()
    x = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)  # 64 MiB in training
    del x
    with peaks.evaluation():
        y = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)  # 256 MiB in evaluation
        del y
    s = peaks.summary()
    assert 64 / 1024 <= s["cuda_peak_allocated_gib"] < 256 / 1024
    assert s["cuda_eval_peak_allocated_gib"] >= 256 / 1024
