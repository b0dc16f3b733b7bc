"""Noisy gradient descent (chapter 6): the batched ensemble against one model per replica.

Both sides run dropout on the two-unit diagonal network of check 3
(``f = sum_j (1 + eta_j) u_j v_j``, one datum) and label noise on the product model ``f = uv``.
The figure is replica-steps per second.
"""

from __future__ import annotations

import torch

from bench.common import Comparison, seconds_per_call
from learndyn.backend import make_generator
from learndyn.singular_limit import DiagonalNetwork, run_noisy_gd, sample_noise

REPLICAS = 4096
STEPS = 200
LOOP_REPLICAS = 8
LOOP_STEPS = 50
ALPHA, SIGMA = 0.02, 0.3


class _DiagonalModule(torch.nn.Module):
    def __init__(self, w0: torch.Tensor, width: int):
        super().__init__()
        self.u = torch.nn.Parameter(w0[:width].clone())
        self.v = torch.nn.Parameter(w0[width:].clone())

    def forward(self, inputs, unit_scale):
        return inputs @ (unit_scale * self.u * self.v)


def _loop(kind: str, network: DiagonalNetwork, w0: torch.Tensor, generator: torch.Generator):
    """The naive baseline: one nn.Module and one torch.optim.SGD per replica, a Python loop."""
    modules = [_DiagonalModule(w, network.width) for w in w0]
    optimizers = [torch.optim.SGD(m.parameters(), lr=ALPHA) for m in modules]
    for _ in range(LOOP_STEPS):
        for module, optimizer in zip(modules, optimizers, strict=True):
            eta = sample_noise(kind, (), network, generator, sigma=SIGMA)
            optimizer.zero_grad()
            if kind == "dropout":
                residual = module(network.inputs, 1 + eta) - network.targets
            else:
                residual = module(network.inputs, 1.0) - network.targets - eta
            (0.5 * residual.square().mean()).backward()
            optimizer.step()


def run(device) -> list[Comparison]:
    cases = {
        "dropout, two-unit diagonal network": (
            "dropout", DiagonalNetwork.make([[1.0, 1.0]], [1.0], device=device),
            [1.6, 0.4, 0.5, 0.5]),
        "label noise, product model uv": (
            "label", DiagonalNetwork.product(1.0, device=device), [2.0, 0.5]),
    }
    comparisons = []
    for name, (kind, network, start) in cases.items():
        w0 = torch.tensor(start, dtype=torch.float64, device=device)
        generator = make_generator(0, device=device)
        ensemble = w0.expand(REPLICAS, w0.numel()).clone()
        batched = seconds_per_call(
            lambda kind=kind, network=network, ensemble=ensemble, generator=generator: run_noisy_gd(
                kind, network, ensemble, ALPHA, STEPS, sigma=SIGMA, record=STEPS,
                generator=generator), repeat=3, device=device)
        few = w0.expand(LOOP_REPLICAS, w0.numel()).clone()
        loop = seconds_per_call(lambda kind=kind, network=network, few=few, generator=generator:
                                _loop(kind, network, few, generator), repeat=3, device=device)
        comparisons.append(Comparison(
            name=f"noisy GD ensemble ({name})",
            figure=REPLICAS * STEPS / batched,
            baseline=LOOP_REPLICAS * LOOP_STEPS / loop,
            unit="replica-steps/s",
            baseline_name="per-replica nn.Module + SGD loop",
            target=100.0))
    return comparisons
