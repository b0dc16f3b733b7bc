"""Shared fixtures: every test that takes ``device`` runs on the CPU, and again on CUDA when present."""

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _book_environment(request, monkeypatch):
    """Tests control the seed and device themselves, whatever the caller's environment says.

    A test that does not take ``device`` is a CPU-only test: its default device is pinned to the
    CPU, so that on a GPU host it does not compute on CUDA what it compares with CPU values.
    """
    monkeypatch.delenv("LEARNDYN_SEED", raising=False)
    if "device" in request.fixturenames:
        monkeypatch.delenv("LEARNDYN_DEVICE", raising=False)
    else:
        monkeypatch.setenv("LEARNDYN_DEVICE", "cpu")
