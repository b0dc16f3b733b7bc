"""The generic ensemble simulator: R replicas of a stochastic update rule advanced together.

The state is a tensor, or a tuple of tensors, whose leading axis is the replica axis. One call of the
user's ``step`` advances every replica by one update, so a run costs one batched operation per step and
never loops over replicas in Python. Observables are recorded on a schedule of step indices, so memory
grows with the number of records, not the number of steps. A replica whose state becomes non-finite or
leaves the ball of radius ``bound`` is flagged and frozen at its last good state; the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .backend import check_count, make_generator

State = torch.Tensor | tuple[torch.Tensor, ...]


def every(interval: int, n_steps: int) -> np.ndarray:
    """Record steps ``0, interval, 2 interval, ...`` and always the last step ``n_steps``."""
    check_count(interval, "interval")
    check_count(n_steps, "n_steps", minimum=0)
    return np.unique(np.append(np.arange(0, n_steps + 1, interval), n_steps))


def log_spaced(n_steps: int, n_records: int) -> np.ndarray:
    """About ``n_records`` record steps spaced evenly in log(step), plus step 0 and ``n_steps``."""
    check_count(n_steps, "n_steps")
    check_count(n_records, "n_records", minimum=2)
    steps = np.rint(np.geomspace(1, n_steps, n_records - 1)).astype(int)
    return np.unique(np.concatenate([[0], steps, [n_steps]]))


@dataclass
class EnsembleResult:
    """What a run returns.

    ``steps[k]`` is the step index of record ``k``; ``records[name][k]`` is observable ``name`` at that
    step, with the replica axis second. ``diverged[r]`` tells whether replica ``r`` was frozen, and
    ``diverged_at[r]`` the first step at which it failed the check (``-1`` if it never did).
    """

    steps: np.ndarray
    records: dict[str, torch.Tensor]
    state: State
    diverged: torch.Tensor
    diverged_at: torch.Tensor
    bound: float = field(default=float("inf"))

    @property
    def n_diverged(self) -> int:
        """How many replicas were frozen."""
        return int(self.diverged.sum())

    def report(self) -> str:
        """One line for a notebook: how many replicas diverged, and at which step the first did."""
        n = self.diverged.numel()
        if not self.n_diverged:
            return f"{n} replicas, none diverged"
        first = int(self.diverged_at[self.diverged].min())
        return (f"{n} replicas, {self.n_diverged} diverged (non-finite or norm > {self.bound:g}); "
                f"the first at step {first}; they were frozen at their last good state")


def run_ensemble(
    step: Callable[[State, object], State],
    state: State,
    n_steps: int,
    *,
    record: int | Sequence[int] | np.ndarray = 1,
    observe: Callable[[State], dict[str, torch.Tensor]] | None = None,
    noise: Callable[[int, torch.Generator], torch.Tensor] | None = None,
    noise_chunk: int = 256,
    bound: float = float("inf"),
    check_every: int = 10,
    generator: torch.Generator | None = None,
) -> EnsembleResult:
    """Advance an ensemble by ``n_steps`` updates of ``step``.

    Implements :eq:`sgd-update` of :doc:`/book/sgd_stochastic_process`, for every replica at once.

    Parameters
    ----------
    step
        ``step(state, noise) -> new_state``, vectorized over the leading replica axis. Without a
        ``noise`` sampler its second argument is the ``torch.Generator`` to draw from; with one, it is
        this step's slice of the pre-drawn noise.
    state
        The initial state: a tensor or a tuple of tensors, each of shape ``(R, ...)``.
    record
        An interval ``k`` (record every k steps, see :func:`every`) or explicit step indices in
        ``[0, n_steps]``, e.g. from :func:`log_spaced`.
    observe
        ``observe(state) -> {name: tensor}``; by default the state itself (``{"state": ...}`` or
        ``{"state0": ..., "state1": ...}`` for tuples).
    noise
        Optional sampler ``noise(k, generator) -> tensor of shape (k, ...)`` (or a tuple of such
        tensors) that draws the noise of ``k`` steps at once; the run calls it once per
        ``noise_chunk`` steps, which saves the fixed cost of a sampler call per step. Work that only
        depends on the noise (turning normals into inputs and labels, say) belongs here too.
    bound
        Replicas whose state norm exceeds ``bound`` (or is not finite) are flagged and frozen.
    check_every
        Check for divergence every this many steps (and at every record and the last step); a replica
        that fails is restored to its state at the previous check, and ``diverged_at`` holds the step
        of the check that caught it. A check costs a few reductions and a ``where`` on the device (it
        reads nothing back to the host), about as much as a small step, hence the default of 10.
    generator
        The random stream; by default one seeded with the book's seed.
    """
    states, was_tuple = _as_tuple(state)
    check_count(n_steps, "n_steps", minimum=0)
    check_count(check_every, "check_every")
    check_count(noise_chunk, "noise_chunk")
    if not (isinstance(bound, float | int) and bound > 0):
        raise ValueError(f"bound={bound!r} must be a positive number (inf for no bound)")
    n_replicas = states[0].shape[0]
    if any(s.dim() == 0 or s.shape[0] != n_replicas for s in states):
        shapes = [tuple(s.shape) for s in states]
        raise ValueError(f"state tensors must share the leading replica axis; got shapes {shapes}")
    record_steps = _record_steps(record, n_steps)
    device = states[0].device
    generator = make_generator(device=device) if generator is None else generator
    if observe is None:
        observe = _observe_state(was_tuple)

    alive = torch.ones(n_replicas, dtype=torch.bool, device=device)
    diverged_at = torch.full((n_replicas,), -1, dtype=torch.long, device=device)
    _check(states, alive, diverged_at, 0, bound)

    record_set = set(record_steps.tolist())
    records: dict[str, list[torch.Tensor]] = {}
    if 0 in record_set:
        _append(records, observe(_pack(states, was_tuple)), device)
    good = states
    rows: list = []
    for t in range(n_steps):
        if noise is None:
            drawn = generator
        else:
            if t % noise_chunk == 0:
                rows = _rows(noise(min(noise_chunk, n_steps - t), generator))
            drawn = rows[t % noise_chunk]
        new = step(states if was_tuple else states[0], drawn)
        states = (new,) if isinstance(new, torch.Tensor) else _as_tuple(new)[0]
        done = t + 1
        if done in record_set or done % check_every == 0 or done == n_steps:
            _check(states, alive, diverged_at, done, bound)
            states = tuple(_where(alive, s, g) for s, g in zip(states, good, strict=True))
            good = states
        if done in record_set:
            _append(records, observe(_pack(states, was_tuple)), device)

    return EnsembleResult(
        steps=record_steps,
        records={name: torch.stack(values) for name, values in records.items()},
        state=_pack(states, was_tuple),
        diverged=~alive,
        diverged_at=diverged_at,
        bound=float(bound),
    )


def _as_tuple(state: State) -> tuple[tuple[torch.Tensor, ...], bool]:
    if isinstance(state, torch.Tensor):
        return (state,), False
    if isinstance(state, tuple | list) and state and all(isinstance(s, torch.Tensor) for s in state):
        return tuple(state), True
    raise ValueError(f"state must be a tensor or a tuple of tensors, got {type(state).__name__}")


def _rows(pending) -> list:
    """The per-step slices of a chunk of noise (a tensor or a tuple of tensors), made at once."""
    if isinstance(pending, tuple):
        return list(zip(*(p.unbind(0) for p in pending), strict=True))
    return list(pending.unbind(0)) if isinstance(pending, torch.Tensor) else pending


def _pack(states: tuple[torch.Tensor, ...], was_tuple: bool) -> State:
    return states if was_tuple else states[0]


def _observe_state(was_tuple: bool):
    if was_tuple:
        return lambda state: {f"state{i}": s for i, s in enumerate(state)}
    return lambda state: {"state": state}


def _record_steps(record, n_steps: int) -> np.ndarray:
    if isinstance(record, int | np.integer) and not isinstance(record, bool):
        return every(int(record), n_steps)
    steps = np.unique(np.asarray(record, dtype=float))
    if steps.size == 0 or np.any(steps != np.round(steps)) or steps[0] < 0 or steps[-1] > n_steps:
        raise ValueError(f"record={record!r} must be an interval or integer steps in [0, {n_steps}]")
    return steps.astype(int)


def _check(states, alive, diverged_at, t: int, bound: float) -> None:
    """Flag replicas that are non-finite or outside the bound, in place and on the device: no value
    is read back to the host, so a check never synchronizes with an accelerator."""
    n_replicas = states[0].shape[0]
    norm2 = sum(s.reshape(n_replicas, -1).square().sum(1) for s in states)
    ok = norm2 <= bound * bound if bound != float("inf") else torch.isfinite(norm2)
    diverged_at.masked_fill_(alive & ~ok, t)
    alive &= ok


def _where(alive: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(alive.view(-1, *([1] * (new.dim() - 1))), new, old)


def _append(records: dict[str, list[torch.Tensor]], observed: dict[str, torch.Tensor],
            device: torch.device) -> None:
    if not isinstance(observed, dict):
        raise ValueError(f"observe must return a dict of tensors, got {type(observed).__name__}")
    for name, value in observed.items():
        value = value if isinstance(value, torch.Tensor) else torch.as_tensor(value, device=device)
        records.setdefault(name, []).append(value.detach().clone())


def replica_mean_and_error(samples: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the replica axis ``dim`` and its standard error ``std / sqrt(R)``."""
    n = samples.shape[dim]
    if n < 2:
        raise ValueError(f"samples has {n} replica(s) along dim {dim}; a standard error needs >= 2")
    return samples.mean(dim), samples.std(dim) / n**0.5


__all__ = ["EnsembleResult", "every", "log_spaced", "replica_mean_and_error", "run_ensemble"]
