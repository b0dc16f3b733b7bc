"""The ensemble engine on the chapter-1 model (online logistic regression in two dimensions).

Figures, all in replica-steps per second at R = 1024:
- the engine (``run_ensemble`` with ``sl_step``, noise drawn in chunks) against the naive alternative,
  one ``nn.Module`` and one ``torch.optim.SGD`` per replica in a Python loop;
- the engine against the bound set by its random numbers alone: ``torch.randn`` of the same shapes.

Both run on one CPU thread (see ``bench.common.threads``).
"""

import torch

from bench.common import Comparison, seconds_per_call, threads
from learndyn.backend import make_generator
from learndyn.ensemble import run_ensemble
from learndyn.gaussian import erf_sigmoid
from learndyn.perceptron import GaussianClasses, sl_update

N_REPLICAS, N_STEPS, CHUNK, ETA, LAM = 1024, 512, 256, 0.01, 0.1


def run(device):
    with threads(1):
        return _run(device)


def _run(device):
    dtype = torch.float64
    classes = GaussianClasses.make([1.0, 0.5], [-1.0, 0.0], [[0.6, 0.3], [0.3, 0.5]],
                                   [[0.3, 0.0], [0.0, 1.0]], device=device)
    generator = make_generator(0, device=device)
    w0 = torch.zeros(N_REPLICAS, 2, dtype=dtype, device=device)

    def normals(k, gen):
        return torch.randn(k, N_REPLICAS, 3, generator=gen, dtype=dtype, device=device)

    def engine():
        # the inputs and labels of a chunk of steps are drawn at once; each step only updates
        run_ensemble(lambda w, xy: sl_update(w, *xy, ETA, LAM), w0, N_STEPS, record=N_STEPS,
                     noise=lambda k, gen: classes.sample(normals(k, gen)), noise_chunk=CHUNK,
                     generator=generator)

    def sampling_only():
        for _ in range(N_STEPS // CHUNK):
            normals(CHUNK, generator)

    engine_time = bound_time = float("inf")
    for _ in range(5):  # alternately, so that a burst of load on the machine hits both
        engine_time = min(engine_time, seconds_per_call(engine, repeat=1, device=device))
        bound_time = min(bound_time, seconds_per_call(sampling_only, repeat=1, device=device))
    engine_rate = N_REPLICAS * N_STEPS / engine_time
    bound_rate = N_REPLICAS * N_STEPS / bound_time
    loop_rate = _naive_rate(classes, device, dtype)
    return [
        Comparison("ensemble engine, chapter-1 model, R=1024", engine_rate, loop_rate,
                   "replica-steps/s", "per-replica nn.Module + SGD loop", target=300),
        Comparison("ensemble engine vs its sampling bound", engine_rate, bound_rate,
                   "replica-steps/s", "torch.randn of the same shapes", target=0.5),
    ]


def _naive_rate(classes, device, dtype, n_replicas=32, n_steps=20):
    """One model and one optimizer per replica, stepped one replica at a time."""
    generator = make_generator(1, device=device)
    models = [torch.nn.Linear(2, 1, bias=False).to(device=device, dtype=dtype)
              for _ in range(n_replicas)]
    optimizers = [torch.optim.SGD(model.parameters(), lr=ETA) for model in models]

    def steps():
        for _ in range(n_steps):
            for model, optimizer in zip(models, optimizers, strict=True):
                normals = torch.randn(1, 3, generator=generator, dtype=dtype, device=device)
                x, y = classes.sample(normals)
                pre = model(x).squeeze()
                error = (0.5 * (y + 1) - erf_sigmoid(pre)).detach().squeeze()
                # a surrogate loss whose gradient is minus the update (3.12)
                loss = -error * pre + 0.5 * LAM * model.weight.square().sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

    return n_replicas * n_steps / seconds_per_call(steps, repeat=3, min_time=0.5, device=device)
