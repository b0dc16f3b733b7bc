"""CPU and CUDA give the same float64 results up to rounding (run only where CUDA is present)."""

import pytest
import torch

from learndyn.backend import make_generator
from learndyn.ensemble import run_ensemble
from learndyn.flows import integrate_moments

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_moment_equations_cpu_gpu():
    def drift(w):
        return torch.stack([torch.sin(w[..., 1]) - w[..., 0], -(w[..., 0] ** 3)], -1)

    results = [integrate_moments(drift, [0.3, -0.2], [[0.2, 0.05], [0.05, 0.1]], [0.0, 0.5, 1.0],
                                 device=device) for device in ("cpu", "cuda")]
    for cpu, gpu in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-12, atol=1e-14)


def test_deterministic_ensemble_cpu_gpu():
    noise = torch.randn(50, 64, 3, generator=make_generator(0), dtype=torch.float64)

    def run(device):
        table = noise.to(device)
        return run_ensemble(lambda w, z: w + 0.01 * torch.tanh(w @ w.T)[:, :3] + 0.1 * z,
                            torch.zeros(64, 3, dtype=torch.float64, device=device), 50, record=10,
                            noise=lambda k, g: table[:k]).records["state"]

    torch.testing.assert_close(run("cuda").cpu(), run("cpu"), rtol=1e-10, atol=1e-12)
