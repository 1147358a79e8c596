"""Shared inputs for the loss tests."""

from __future__ import annotations

import pytest
import torch


def make_inputs(batch=2, classes=4, spatial=(12, 10), seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, *spatial, generator=gen, dtype=torch.float64).to(dtype)
    target = torch.randint(0, classes, (batch, *spatial), generator=gen)
    return logits, target


@pytest.fixture
def inputs():
    return make_inputs()
