"""Decode-worker and inference-thread choice by core count (xsearch/engine/batching.py)."""
from __future__ import annotations

import pytest

from xsearch.engine import batching


@pytest.mark.parametrize("cores, device, workers", [
    (1, "cpu", 0), (2, "cpu", 0), (3, "cpu", 0), (4, "cpu", 1), (16, "cpu", 2), (64, "cpu", 4),
    (2, "cuda", 2), (16, "cuda:0", 4),
])
def test_default_workers_by_core_count(monkeypatch, cores, device, workers):
    monkeypatch.delenv("XSEARCH_WORKERS", raising=False)
    monkeypatch.setattr(batching.os, "cpu_count", lambda: cores)
    assert batching.default_workers(device) == workers
    monkeypatch.setenv("XSEARCH_WORKERS", "3")
    assert batching.default_workers(device) == 3


def test_inference_threads_leave_cores_to_workers(monkeypatch):
    monkeypatch.setattr(batching.os, "cpu_count", lambda: 8)
    assert batching.inference_threads(0, 8) is None  # no workers: torch keeps its own setting
    assert batching.inference_threads(1, 8) == 7
    assert batching.inference_threads(2, 4) == 4  # never more threads than torch had
    assert batching.inference_threads(8, 8) == 1
    assert batching.inference_threads(2, 8, "cuda") is None


@pytest.mark.needs_data
def test_embed_images_restores_torch_threads(mini, photos):
    import torch

    from xsearch.media import discover

    files = [f for f in discover([photos]) if f.path.endswith(".jpg")]
    before = torch.get_num_threads()
    got = []
    batching.embed_images(mini, files, got.append, lambda p, r: None, batch_size=2, workers=1)
    assert sum(len(b.files) for b in got) == len(files) == 4
    assert torch.get_num_threads() == before
