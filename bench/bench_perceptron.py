"""Chapter 3 (nonlinear perceptron): Owen's T against scipy, and the replica-batched SL/RL learning
rules at N = 500, R = 1024 against a per-replica loop and against the cost of sampling the inputs.
Everything runs on one CPU thread (scipy's ufunc has one; on a shared 2-core machine a second torch
thread mostly waits), each figure in the same run as its baseline."""

from __future__ import annotations

import numpy as np
import scipy.special
import torch

from bench.common import Comparison, seconds_per_call, threads
from learndyn.backend import make_generator
from learndyn.gaussian import owens_t
from learndyn.perceptron import GaussianClasses, simulate

N_INPUT, N_REPLICAS, N_STEPS = 500, 1024, 64
LOOP_REPLICAS, LOOP_STEPS = 4, 50


def _owens_t(device) -> list[Comparison]:
    """Both on one CPU thread (scipy's ufunc is single-threaded; on a shared machine a second torch
    thread mostly waits), timed alternately in one run, best of several repeats."""
    rng = np.random.default_rng(0)
    h, a = rng.normal(0, 3, 1_000_000), rng.standard_cauchy(1_000_000)
    h_t = torch.tensor(h, dtype=torch.float64, device=device)
    a_t = torch.tensor(a, dtype=torch.float64, device=device)
    ours = theirs = float("inf")
    with threads(1):
        for _ in range(5):
            ours = min(ours, seconds_per_call(lambda: owens_t(h_t, a_t), repeat=1, device=device))
            theirs = min(theirs, seconds_per_call(lambda: scipy.special.owens_t(h, a), repeat=1))
        computed = owens_t(h_t, a_t).cpu().numpy()
    error = np.abs(computed - scipy.special.owens_t(h, a)).max()
    name = f"owens_t, 1e6 points, 1 thread (max |diff| {error:.1e})"
    return [Comparison(name, 1e6 / ours, 1e6 / theirs, "points/s", "scipy.special.owens_t", 1.0)]


def _classes(device):
    mu = torch.zeros(N_INPUT, dtype=torch.float64, device=device)
    mu[0] = 1.0
    return GaussianClasses.make(mu, -mu, 0.25, device=device)


def _batched(rule: str, device):
    classes = _classes(device)
    w0 = torch.zeros(N_REPLICAS, N_INPUT, dtype=torch.float64, device=device)
    generator = make_generator(0, device=device)

    def run():
        simulate(classes, w0, 0.01, N_STEPS, rule=rule, sigmoid="logistic", record=[0, N_STEPS],
                 generator=generator, noise_chunk=N_STEPS, check_every=N_STEPS)

    width = N_INPUT + (1 if rule == "sl" else 2)

    def sample_only():
        torch.randn(N_STEPS, N_REPLICAS, width, generator=generator, dtype=torch.float64,
                    device=device)

    full = bound = float("inf")
    for _ in range(3):  # alternately, so that a burst of load on the machine hits both
        full = min(full, seconds_per_call(run, repeat=1, device=device))
        bound = min(bound, seconds_per_call(sample_only, repeat=1, device=device))
    return N_REPLICAS * N_STEPS / full, N_REPLICAS * N_STEPS / bound


def _loop(rule: str, device) -> float:
    """One nn.Linear and one torch.optim.SGD per replica, updated one replica at a time."""
    classes = _classes(device)
    generator = make_generator(1, device=device)
    models = [torch.nn.Linear(N_INPUT, 1, bias=False).to(device=device, dtype=torch.float64)
              for _ in range(LOOP_REPLICAS)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01) for m in models]

    def run():
        for model, optimizer in zip(models, optimizers, strict=True):
            for _ in range(LOOP_STEPS):
                normals = torch.randn(1, N_INPUT + 2, generator=generator, dtype=torch.float64,
                                      device=device)
                x, y = classes.sample(normals[:, :-1])
                optimizer.zero_grad()
                logit = model(x).squeeze(-1)
                if rule == "sl":
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, (y + 1) / 2)
                else:
                    p = torch.sigmoid(logit)
                    output = torch.where(torch.rand(1, generator=generator, dtype=torch.float64,
                                                    device=device) < p, 1.0, -1.0).detach()
                    delta = (y * output - y * (2 * p - 1)).detach()
                    loss = -(delta * torch.nn.functional.logsigmoid(output * logit)).sum()
                loss.backward()
                optimizer.step()

    return LOOP_REPLICAS * LOOP_STEPS / seconds_per_call(run, repeat=2, min_time=0.1,
                                                         device=device)


def run(device) -> list[Comparison]:
    comparisons = _owens_t(device)
    for rule in ("sl", "rl"):
        with threads(1):  # figure and bound alike; a second thread mostly waits on a shared machine
            batched, bound = _batched(rule, device)
            loop = _loop(rule, device)
        label = f"{rule.upper()} ensemble N={N_INPUT} R={N_REPLICAS}"
        comparisons.append(Comparison(label, batched, loop, "replica-steps/s",
                                      "per-replica nn.Module + SGD loop"))
        comparisons.append(Comparison(label, batched, bound, "replica-steps/s",
                                      "Gaussian sampling alone (bound)", 0.85))
    return comparisons
