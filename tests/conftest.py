"""Shared fixtures: every test that takes ``device`` runs on the CPU, and again on CUDA when present."""

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _book_environment(monkeypatch):
    """Tests control the seed and device themselves, whatever the caller's environment says."""
    monkeypatch.delenv("LEARNDYN_SEED", raising=False)
    monkeypatch.delenv("LEARNDYN_DEVICE", raising=False)
