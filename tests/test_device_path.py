"""The device path, proven on a CPU-only machine.

Two instruments:

- ``meta_default_device``: torch's default device set to ``meta`` while a kernel runs on CPU inputs.
  A tensor that a kernel creates without ``device=`` lands on ``meta``, and the first operation that
  mixes it with the inputs fails, exactly as a forgotten ``device=`` fails on a GPU host.
- ``host_reads``: counts the calls that read a tensor's value back to the host (``item``, ``bool``,
  ``float``, ``int``, ``tolist``, ``numpy``). On an accelerator each one is a synchronization. A
  runner may validate its arguments once per call, but the count must not grow with the number of
  steps: zero host reads per step.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from learndyn import ndk
from learndyn import noise_injection as ni
from learndyn.backend import make_generator
from learndyn.ensemble import run_ensemble
from learndyn.flows import integrate_moments, rk4
from learndyn.perceptron import GaussianClasses, simulate, symmetric_mean_update
from learndyn.singular_limit import DiagonalNetwork, limiting_flow, run_noisy_gd

CPU = torch.device("cpu")
READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def meta_default_device():
    previous = torch.get_default_device()
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(previous)


@contextlib.contextmanager
def host_reads():
    """Yield a one-element list that holds the number of host reads made inside the block."""
    count, depth = [0], [0]
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(original):
        def read(self, *args, **kwargs):
            # a torch function mode (left by set_default_device) may dispatch one read twice
            count[0] += depth[0] == 0
            depth[0] += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                depth[0] -= 1
        return read

    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(original))
    try:
        yield count
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def reads_per_extra_step(run, short: int = 20, long: int = 60) -> float:
    """Host reads that a run makes per step, from two runs that differ only in their length."""
    counts = []
    for n_steps in (short, long):
        with host_reads() as count:
            run(n_steps)
        counts.append(count[0])
    return (counts[1] - counts[0]) / (long - short)


def _linear_step(w, gen):
    return 0.9 * w + 0.1 * torch.randn(w.shape, generator=gen, dtype=w.dtype, device=w.device)


def _ensemble(n_steps, record=1):
    return run_ensemble(_linear_step, torch.zeros(64, 3, dtype=torch.float64, device=CPU), n_steps,
                        record=record, generator=make_generator(0, device=CPU), bound=10.0,
                        check_every=1)


def _moments(n_steps):
    drift = lambda w: -w + 0.1 * torch.sin(w)  # noqa: E731
    times = torch.linspace(0, 0.01 * n_steps, n_steps + 1, dtype=torch.float64, device=CPU)
    return integrate_moments(drift, torch.ones(2, device=CPU), 0.1 * torch.eye(2, device=CPU),
                             times, device=CPU)


def test_the_instruments_see_what_they_must():
    with host_reads() as count:
        torch.ones(3).sum().item()
        bool(torch.ones(()) > 0)
    assert count[0] == 2
    with meta_default_device(), pytest.raises((RuntimeError, NotImplementedError)):
        torch.ones(3, device=CPU) + torch.ones(3)  # a tensor created without device=
    assert torch.ones(1).device.type == "cpu"


@pytest.mark.parametrize("kernel", [_ensemble, _moments], ids=["run_ensemble", "integrate_moments"])
def test_kernels_create_nothing_off_their_inputs_device(kernel):
    with meta_default_device():
        result = kernel(12)
    tensors = [result.state] if hasattr(result, "state") else list(result)
    assert all(t.device == CPU for t in tensors)


def test_the_ensemble_runner_reads_nothing_back_per_step():
    assert reads_per_extra_step(lambda n: _ensemble(n, record=1)) == 0
    assert reads_per_extra_step(lambda n: _ensemble(n, record=n)) == 0


def test_rk4_reads_nothing_back_per_step():
    def run(n_steps):
        times = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)
        rk4(lambda t, y: -y, torch.ones(4, dtype=torch.float64), times)
    assert reads_per_extra_step(run) == 0


def test_the_moment_equations_read_nothing_back_per_step():
    assert reads_per_extra_step(_moments) == 0


def _classes():
    return GaussianClasses.make(torch.tensor([1.0, 0.0, 0.0], device=CPU),
                                torch.tensor([-1.0, 0.0, 0.0], device=CPU), 0.25, device=CPU)


def _perceptron(rule):
    def run(n_steps, record=1):
        return simulate(_classes(), torch.zeros(16, 3, dtype=torch.float64, device=CPU), 0.01, n_steps,
                        rule=rule, record=record, generator=make_generator(0, device=CPU))
    return run


def _toy_sgd(moments):
    def run(n_steps, record=1):
        initial = tuple(torch.full((32,), v, dtype=torch.float64, device=CPU) for v in (1.5, 1.0, 0.5))
        sigma_eps = torch.linspace(0.1, 1.0, 32, dtype=torch.float64, device=CPU)
        return ni.run_toy_sgd(initial, 0.05, sigma_eps, n_steps, batch_size=8, moments=moments,
                              record=record, generator=make_generator(0, device=CPU), device=CPU)
    return run


def _langevin(n_steps, record=1):
    x_train, y, x_test = ndk.synthetic_task(2, 0.5, device=CPU)
    generator = make_generator(3, device=CPU)
    weights = ndk.init_networks(8, [3, 16], init_variance=1.0, generator=generator, device=CPU)
    return ndk.simulate_langevin(weights, x_train, y, x_test, temperature=0.1, prior_variance=1.0,
                                 dt=0.05, n_steps=n_steps, record=record, generator=generator)


def _diagonal_network():
    inputs = torch.tensor([[1.0, 0.5], [0.2, 1.0], [0.7, 0.3]], dtype=torch.float64, device=CPU)
    return DiagonalNetwork.make(inputs, torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64, device=CPU),
                                device=CPU)


def _noisy_gd(kind):
    def run(n_steps, record=1):
        w0 = torch.full((8, 4), 0.7, dtype=torch.float64, device=CPU)
        return run_noisy_gd(kind, _diagonal_network(), w0, 0.05, n_steps, sigma=0.3, record=record,
                            generator=make_generator(0, device=CPU))
    return run


def _limiting(n_steps):
    times = torch.linspace(0, 0.05 * n_steps, n_steps + 1, dtype=torch.float64, device=CPU)
    return limiting_flow("dropout", torch.full((3, 4), 0.7, dtype=torch.float64, device=CPU), times,
                         _diagonal_network(), substeps=2)


def _perceptron_flow(n_steps):
    mu = torch.tensor([1.0, 0.0], dtype=torch.float64, device=CPU)
    var = torch.tensor([[0.25, 0.25], [0.5, 0.5]], dtype=torch.float64, device=CPU)
    lam = torch.tensor([[0.1], [0.3]], dtype=torch.float64, device=CPU)
    times = torch.linspace(0, 0.1 * n_steps, n_steps + 1, dtype=torch.float64, device=CPU)
    return rk4(lambda _t, w: symmetric_mean_update(w, mu, var, lam, "rl"),
               torch.full((2, 2), 0.1, dtype=torch.float64, device=CPU), times)


def _volterra(p):
    def run(n_nodes):
        times = torch.linspace(0, 1, n_nodes, dtype=torch.float64, device=CPU)
        decay = torch.exp(-(times[:, None] - times[None, :]).clamp_min(0))
        gram = torch.eye(p, dtype=torch.float64, device=CPU) + 0.1
        kernel = decay[:, :, None, None] * gram
        return ndk.solve_volterra(kernel, torch.ones(p, dtype=torch.float64, device=CPU), times,
                                  device=CPU)
    return run


RUNNERS = {
    "perceptron.simulate sl": _perceptron("sl"), "perceptron.simulate rl": _perceptron("rl"),
    "run_toy_sgd wishart": _toy_sgd("wishart"), "run_toy_sgd samples": _toy_sgd("samples"),
    "run_toy_sgd reduced": _toy_sgd("reduced"), "simulate_langevin": _langevin,
    "run_noisy_gd label": _noisy_gd("label"), "run_noisy_gd dropout": _noisy_gd("dropout"),
}
FLOWS = {"limiting_flow": _limiting, "perceptron flow, tensor lam": _perceptron_flow,
         "solve_volterra P=1": _volterra(1), "solve_volterra P=2": _volterra(2)}


@pytest.mark.parametrize("name", RUNNERS)
def test_every_ensemble_runner_reads_nothing_back_per_step(name):
    run = RUNNERS[name]
    assert reads_per_extra_step(lambda n: run(n, record=1)) == 0
    assert reads_per_extra_step(lambda n: run(n, record=n)) == 0


@pytest.mark.parametrize("name", FLOWS)
def test_every_flow_integrator_reads_nothing_back_per_step(name):
    assert reads_per_extra_step(FLOWS[name]) == 0


@pytest.mark.parametrize("name", [*RUNNERS, *FLOWS])
def test_runners_and_flows_create_nothing_off_their_inputs_device(name):
    with meta_default_device():
        result = {**RUNNERS, **FLOWS}[name](6)
    tensors = result if isinstance(result, (tuple, list)) else [getattr(result, "state", result)]
    for tensor in tensors:
        for t in tensor if isinstance(tensor, tuple) else (tensor,):
            assert t is None or t.device == CPU
