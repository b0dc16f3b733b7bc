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

from learndyn.backend import make_generator
from learndyn.ensemble import run_ensemble
from learndyn.flows import integrate_moments, rk4

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
