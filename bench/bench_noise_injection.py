"""Benchmarks of the noise-injection chapter: replica-batched toy-model SGD and the batched MLP
sweep, each against the per-replica loop (one model and one ``torch.optim.SGD`` per replica)."""

from __future__ import annotations

import torch

from bench.common import Comparison, seconds_per_call
from learndyn import noise_injection as ni
from learndyn.backend import make_generator

TOY_REPLICAS, TOY_LOOP_REPLICAS, TOY_BATCH, TOY_STEPS = 2048, 8, 64, 10
MLP_MODELS, MLP_LOOP_MODELS, MLP_STEPS = 48, 4, 10
WIDTH, D_IN, D_OUT, MLP_BATCH = 32, 64, 10, 128


class _ToyModel(torch.nn.Module):
    """The toy model with a NIN, Eq. (ni-toy-model), as one ordinary module."""

    def __init__(self, dtype, device):
        super().__init__()
        self.w0, self.w1, self.wn = (torch.nn.Parameter(torch.tensor(v, dtype=dtype, device=device))
                                     for v in (1.5, 1.0, 0.1))

    def forward(self, x, eps):
        return self.w1 * (self.w0 * x + self.wn * eps)


def _toy_loop(n_replicas, device, dtype):
    generator = make_generator(0, device=device)
    models = [_ToyModel(dtype, device) for _ in range(n_replicas)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01) for m in models]

    def run():
        for _ in range(TOY_STEPS):
            for model, optimizer in zip(models, optimizers, strict=True):
                x = torch.randn(TOY_BATCH, generator=generator, device=device, dtype=dtype)
                eps = 3.0 * torch.randn(TOY_BATCH, generator=generator, device=device, dtype=dtype)
                optimizer.zero_grad()
                loss = 0.5 * (model(x, eps) - x).square().mean()
                loss.backward()
                optimizer.step()
    return run


def _toy_batched(n_replicas, device, dtype, moments):
    init = tuple(torch.full((n_replicas,), v, device=device, dtype=dtype) for v in (1.5, 1.0, 0.1))
    generator = make_generator(0, device=device)

    def run():
        ni.run_toy_sgd(init, 0.01, 3.0, TOY_STEPS, batch_size=TOY_BATCH, moments=moments,
                       record=[TOY_STEPS], generator=generator, device=device, dtype=dtype)
    return run


def _mlp_data(device, dtype):
    g = make_generator(1, device=device)
    x = torch.randn(600, D_IN, generator=g, device=device, dtype=dtype)
    y = torch.randint(D_OUT, (600,), generator=g, device=device)
    return x, y


def _mlp_loop(n_models, device, dtype):
    x, y = _mlp_data(device, dtype)
    y_hot = torch.nn.functional.one_hot(y, D_OUT).to(dtype)
    generator = make_generator(2, device=device)
    nets = []
    for _ in range(n_models):
        layer0 = torch.nn.Linear(D_IN, WIDTH).to(device=device, dtype=dtype)
        layer1 = torch.nn.Linear(WIDTH, D_OUT).to(device=device, dtype=dtype)
        w_ni = torch.nn.Parameter(0.02 * torch.randn(WIDTH, device=device, dtype=dtype))
        params = [*layer0.parameters(), *layer1.parameters(), w_ni]
        nets.append((layer0, layer1, w_ni, torch.optim.SGD(params, lr=0.03)))

    def run():
        for _ in range(MLP_STEPS):
            for layer0, layer1, w_ni, optimizer in nets:
                index = torch.randint(x.shape[0], (MLP_BATCH,), generator=generator, device=device)
                eps = 5.0 * torch.randn(MLP_BATCH, 1, generator=generator, device=device,
                                        dtype=dtype)
                out = layer1(torch.relu(layer0(x[index]) + eps * w_ni))
                optimizer.zero_grad()
                (0.5 * (out - y_hot[index]).square().sum(-1).mean()).backward()
                optimizer.step()
    return run


def _mlp_batched(n_models, device, dtype):
    x, y = _mlp_data(device, dtype)
    params = ni.init_nin_mlp(n_models, D_IN, WIDTH, D_OUT, nin_scale=0.1,
                             generator=make_generator(3, device=device), device=device, dtype=dtype)
    sigma = torch.full((n_models,), 5.0, device=device, dtype=dtype)

    def run():
        ni.train_nin_mlp(params, x, y, x[:10], y[:10], sigma, eta=0.03, batch_size=MLP_BATCH,
                         n_steps=MLP_STEPS, record=[MLP_STEPS], monitor=10,
                         generator=make_generator(4, device=device))
    return run


def run(device) -> list[Comparison]:
    dtype = torch.float64
    loop = seconds_per_call(_toy_loop(TOY_LOOP_REPLICAS, device, dtype), repeat=2, device=device)
    loop_rate = TOY_LOOP_REPLICAS * TOY_STEPS / loop
    comparisons = []
    for moments in ("samples", "wishart"):
        batched = seconds_per_call(_toy_batched(TOY_REPLICAS, device, dtype, moments), repeat=2,
                                   device=device)
        comparisons.append(Comparison(
            f"toy SGD, {TOY_REPLICAS} replicas, |B|={TOY_BATCH}, moments={moments}",
            TOY_REPLICAS * TOY_STEPS / batched, loop_rate, "replica-steps/s",
            "per-replica nn.Module + optim.SGD loop", target=10.0))
    dtype32 = torch.float32
    loop = seconds_per_call(_mlp_loop(MLP_LOOP_MODELS, device, dtype32), repeat=2, device=device)
    batched = seconds_per_call(_mlp_batched(MLP_MODELS, device, dtype32), repeat=2, device=device)
    comparisons.append(Comparison(
        f"NIN MLP sweep, {MLP_MODELS} models (float32)", MLP_MODELS * MLP_STEPS / batched,
        MLP_LOOP_MODELS * MLP_STEPS / loop, "model-steps/s",
        "per-model nn.Module + optim.SGD loop", target=2.0))
    return comparisons
