"""Benchmarks of learndyn.ndk (chapter 5), each against a baseline measured in the same run.

1. Static NNGP + NTK kernels, 1000 x 1000 inputs of dimension 784, ReLU, depth 3, float64: the in-place
   recursion of ``static_kernels`` against the generic (allocating) ``kernels_from_gram``; and, when
   ``$NEURAL_TANGENTS_PYTHON`` names an interpreter that has neural-tangents (``make bench-compare``
   builds one), against neural-tangents with JAX jit on the same inputs, the two timed in turn in this
   run (target: faster than it).
2. The Volterra solver (scalar reduction, 400 time nodes) against a plain double loop over time steps.
3. The batched Langevin ensemble (256 networks, one hidden layer of 128 erf units) against one
   ``nn.Module`` and one ``torch.optim.SGD`` per network in a Python loop (timed on 4 networks and
   scaled), in network-steps per second.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import Comparison, seconds_per_call
from learndyn import ndk
from learndyn.backend import make_generator

NEURAL_TANGENTS_SCRIPT = Path(__file__).with_name("neural_tangents_timing.py")


def _neural_tangents_seconds(x: torch.Tensor, depth: int, repeat: int) -> float | None:
    """neural-tangents' best time on ``x``, from the interpreter ``$NEURAL_TANGENTS_PYTHON``, or None."""
    python = os.environ.get("NEURAL_TANGENTS_PYTHON")
    if not python:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npy"
        np.save(path, x.cpu().numpy())
        run = subprocess.run([python, str(NEURAL_TANGENTS_SCRIPT), str(path), str(depth), str(repeat)],
                             capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])["seconds"]


def _static(device) -> list[Comparison]:
    generator = make_generator(0, device=device)
    x = torch.randn(1000, 784, generator=generator, device=device, dtype=torch.float64)

    def fast():
        return ndk.static_kernels(x, x, weight_variance=1.0, activation="relu", depth=3,
                                  device=device)

    def generic():
        gram, self1, self2 = ndk.input_gram(x, x)
        kernels = ndk.kernels_from_gram(gram, self1[:, None], self2[None, :], 1.0, 1.0, 1.0, 1.0,
                                        activation="relu", depth=3)
        return kernels.nngp, kernels.ndk

    ours = seconds_per_call(fast, device=device, repeat=5, min_time=0.5)
    baseline = seconds_per_call(generic, device=device, repeat=3, min_time=0.5)
    comparisons = [Comparison("static NNGP+NTK 1000x1000x784 ReLU L=3", 1 / ours, 1 / baseline,
                              "calls/s", "generic allocating recursion")]
    theirs = [_neural_tangents_seconds(x, 3, 5) for _ in range(2)]
    if theirs[0] is None:
        print("  (neural-tangents not available: `make bench-compare` measures it side by side)")
        return comparisons
    ours = min(ours, *(seconds_per_call(fast, device=device, repeat=3, min_time=0.5) for _ in range(2)))
    comparisons.append(Comparison("static NNGP+NTK 1000x1000x784 ReLU L=3", 1 / ours, 1 / min(theirs),
                                  "calls/s", "neural-tangents+JAX jit, same run", target=1.0))
    return comparisons


def _volterra(device) -> list[Comparison]:
    times = torch.linspace(0, 40, 400, device=device, dtype=torch.float64)
    train, _, _ = ndk.symmetric_task_kernels(times, 0.7, activation="erf", depth=2,
                                             temperature=0.1, prior_variance=1.0,
                                             init_variance=4.0, device=device)
    target = torch.ones(1, device=device, dtype=torch.float64)
    ours = seconds_per_call(lambda: ndk.solve_volterra(train, target, times, device=device),
                            device=device, repeat=3)
    flat, grid = train[..., 0, 0].cpu(), times.cpu()
    start = time.perf_counter()
    ndk.volterra_double_loop(flat, 1.0, grid)
    baseline = time.perf_counter() - start
    return [Comparison("Volterra solve, 400 nodes (scalar task)", 1 / ours, 1 / baseline,
                       "solves/s", "plain double loop")]


def _langevin(device) -> list[Comparison]:
    x_train, y, x_test = ndk.synthetic_task(4, 0.73, device=device)
    replicas, width, steps = 256, 128, 50
    physics = dict(temperature=0.1, prior_variance=1.0)
    generator = make_generator(0, device=device)
    weights = ndk.init_networks(replicas, [5, width], init_variance=4.0, generator=generator,
                                device=device)

    def batched():
        ndk.simulate_langevin(weights, x_train, y, x_test, activation="erf", dt=0.04,
                              n_steps=steps, record=steps, generator=generator, **physics)

    ours = seconds_per_call(batched, device=device, repeat=3, min_time=0.2)

    class Network(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = torch.nn.Parameter(2 * torch.randn(width, 5, dtype=torch.float64,
                                                             device=device))
            self.readout = torch.nn.Parameter(2 * torch.randn(width, dtype=torch.float64,
                                                              device=device))

        def forward(self, x):
            return torch.erf(x @ self.hidden.T / math.sqrt(5)) @ self.readout / math.sqrt(width)

    loop_replicas = 4
    networks = [Network() for _ in range(loop_replicas)]
    optimizers = [torch.optim.SGD(net.parameters(), lr=0.04) for net in networks]
    decay = math.exp(-physics["temperature"] * 0.04)
    spread = math.sqrt(-math.expm1(-2 * physics["temperature"] * 0.04))

    def loop():
        for _ in range(steps):
            for net, optimizer in zip(networks, optimizers, strict=True):
                optimizer.zero_grad()
                loss = 0.5 * (net(x_train) - y).square().sum()
                loss.backward()
                with torch.no_grad():
                    for parameter in net.parameters():
                        parameter.mul_(decay).add_(spread * torch.randn_like(parameter))
                optimizer.step()

    baseline = seconds_per_call(loop, device=device, repeat=2, min_time=0.2)
    return [Comparison("Langevin ensemble, 256 erf nets N=128", replicas * steps / ours,
                       loop_replicas * steps / baseline, "network-steps/s",
                       "per-network nn.Module + SGD loop")]


def run(device) -> list[Comparison]:
    return _static(device) + _volterra(device) + _langevin(device)
