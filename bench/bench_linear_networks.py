"""Benchmark: long-run ensemble SGD with running moments (learndyn.linear_networks) against the
naive baseline, one ``nn.Module`` and one ``torch.optim.SGD`` per replica in a Python loop that
also accumulates the replica's running second moment. Figures are replica-steps per second.

Both sides run on one CPU thread (restored afterwards): every operation here is tiny, and on a
shared 2-core machine a second thread only adds synchronisation cost (tenfold on a loaded machine).
"""

from __future__ import annotations

import torch

from bench.common import Comparison, seconds_per_call
from learndyn import linear_networks as ln
from learndyn.backend import make_generator

N_INPUTS, ETA, NOISE = 10, 0.02, 0.25


def _loop_single_layer(n_replicas: int, n_steps: int, device) -> None:
    generator = make_generator(1, device=device)
    models = [torch.nn.Linear(N_INPUTS, 1, bias=False).to(device, torch.float64)
              for _ in range(n_replicas)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=ETA) for m in models]
    moments = [torch.zeros(N_INPUTS, N_INPUTS, dtype=torch.float64, device=device)
               for _ in range(n_replicas)]
    for _ in range(n_steps):
        for model, optimizer, moment in zip(models, optimizers, moments, strict=True):
            x = torch.randn(1, N_INPUTS, generator=generator, dtype=torch.float64, device=device)
            y = NOISE**0.5 * torch.randn(1, 1, generator=generator, dtype=torch.float64,
                                         device=device)
            optimizer.zero_grad()
            loss = 0.5 * ((model(x) - y) ** 2).sum()
            loss.backward()
            optimizer.step()
            w = model.weight.detach()[0]
            moment.add_(torch.outer(w, w))


def _loop_two_layer(n_replicas: int, n_steps: int, width: int, device) -> None:
    generator = make_generator(2, device=device)
    models = [torch.nn.Sequential(torch.nn.Linear(width, width, bias=False),
                                  torch.nn.Linear(width, width, bias=False)).to(device,
                                                                               torch.float64)
              for _ in range(n_replicas)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=ETA) for m in models]
    d = 2 * width * width
    moments = [torch.zeros(d, d, dtype=torch.float64, device=device) for _ in range(n_replicas)]
    for _ in range(n_steps):
        for model, optimizer, moment in zip(models, optimizers, moments, strict=True):
            x = torch.randn(1, width, generator=generator, dtype=torch.float64, device=device)
            y = x + NOISE**0.5 * torch.randn(1, width, generator=generator, dtype=torch.float64,
                                             device=device)
            optimizer.zero_grad()
            loss = 0.5 * ((model(x) - y) ** 2).sum()
            loss.backward()
            optimizer.step()
            flat = torch.cat([p.detach().flatten() for p in model.parameters()])
            moment.add_(torch.outer(flat, flat))


def run(device) -> list[Comparison]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _comparisons(device)
    finally:
        torch.set_num_threads(threads)


def _comparisons(device) -> list[Comparison]:
    comparisons = []
    replicas, steps = 1000, 256
    sigma = torch.eye(N_INPUTS, dtype=torch.float64)

    def batched_single():
        ln.online_single_layer_sgd(sigma, NOISE, ETA, 1, replicas, steps, 0,
                                   generator=make_generator(3, device=device), device=device)

    batched = replicas * steps / seconds_per_call(batched_single, repeat=3, device=device)
    loop = 4 * 20 / seconds_per_call(lambda: _loop_single_layer(4, 20, device), repeat=3,
                                     device=device)
    comparisons.append(Comparison("single layer N=10, R=1000, running moments", batched, loop,
                                  "replica-steps/s", "per-replica nn.Linear + SGD loop",
                                  target=10))

    width = 3
    w1, w2, _, _, _ = ln.balanced_minimum(torch.diag(torch.tensor([2.0, 1.0, 0.5],
                                                                  dtype=torch.float64)))

    def batched_two():
        ln.two_layer_sgd(w1, w2, w2 @ w1, NOISE, ETA, 1, 500, steps, 0,
                         generator=make_generator(4, device=device), device=device)

    batched = 500 * steps / seconds_per_call(batched_two, repeat=3, device=device)
    loop = 4 * 20 / seconds_per_call(lambda: _loop_two_layer(4, 20, width, device), repeat=3,
                                     device=device)
    comparisons.append(Comparison("two layers K=M=N=3, R=500, running moments", batched, loop,
                                  "replica-steps/s", "per-replica nn.Sequential + SGD loop",
                                  target=10))
    return comparisons
