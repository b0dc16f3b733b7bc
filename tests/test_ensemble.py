import numpy as np
import pytest
import torch

from learndyn.backend import make_generator
from learndyn.ensemble import every, log_spaced, replica_mean_and_error, run_ensemble


def random_walk(state, generator):
    return state + torch.randn(state.shape, generator=generator, device=state.device,
                               dtype=state.dtype)


def test_schedules():
    assert every(3, 10).tolist() == [0, 3, 6, 9, 10]
    steps = log_spaced(10_000, 20)
    assert steps[0] == 0 and steps[-1] == 10_000 and np.all(np.diff(steps) > 0)
    assert len(steps) <= 21
    with pytest.raises(ValueError, match="interval=0"):
        every(0, 10)
    with pytest.raises(ValueError, match="n_records=1"):
        log_spaced(100, 1)


def test_records_follow_schedule_and_memory_is_per_record(device):
    state = torch.zeros(8, 2, dtype=torch.float64, device=device)
    result = run_ensemble(random_walk, state, 1000, record=log_spaced(1000, 10),
                          generator=make_generator(0, device=device))
    assert result.records["state"].shape == (len(result.steps), 8, 2)
    assert result.steps[-1] == 1000
    assert torch.equal(result.records["state"][-1], result.state)
    assert torch.all(result.records["state"][0] == 0)


def test_same_seed_same_trajectory_different_seed_different(device):
    state = torch.zeros(4, 3, dtype=torch.float64, device=device)

    def run(seed):
        return run_ensemble(random_walk, state, 50, record=10,
                            generator=make_generator(seed, device=device)).records["state"]

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_noise_sampler_chunks_give_the_same_run_as_any_chunk_size(device):
    state = torch.zeros(5, 2, dtype=torch.float64, device=device)

    def run(chunk):
        return run_ensemble(lambda s, z: s + z, state, 37, record=1, noise_chunk=chunk,
                            noise=lambda k, g: torch.ones(k, 5, 2, dtype=torch.float64,
                                                          device=device),
                            generator=make_generator(0, device=device))

    a, b = run(1), run(10)
    assert torch.equal(a.records["state"], b.records["state"])
    assert torch.all(a.state == 37)


def test_divergent_replicas_are_flagged_and_frozen_not_raised(device):
    growth = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64, device=device)
    state = torch.ones(3, 1, dtype=torch.float64, device=device)

    def step(s, _):
        return s * growth[:, None] ** 100  # replica 1 overflows to inf after a few steps

    result = run_ensemble(step, state, 20, record=5, check_every=1)
    assert result.diverged.tolist() == [False, True, False]
    assert result.diverged_at[1] > 0 and result.diverged_at[0] == -1
    assert torch.isfinite(result.state).all()
    assert torch.all(result.state[[0, 2]] == 1)
    assert "1 diverged" in result.report()


def test_bound_flags_large_norms(device):
    state = torch.zeros(2, 2, dtype=torch.float64, device=device)
    speeds = torch.tensor([[0.1], [1.0]], dtype=torch.float64, device=device)
    result = run_ensemble(lambda s, _: s + speeds, state, 10, bound=5.0, check_every=1)
    assert result.diverged.tolist() == [False, True]
    assert torch.linalg.norm(result.state[1]) <= 5.0
    assert result.diverged_at[1] == 4  # ||(k, k)|| > 5 first at k = 4


def test_coarse_checks_restore_the_state_of_the_previous_check(device):
    state = torch.zeros(2, 1, dtype=torch.float64, device=device)
    speeds = torch.tensor([[0.1], [1.0]], dtype=torch.float64, device=device)
    result = run_ensemble(lambda s, _: s + speeds, state, 30, bound=12.0, check_every=10,
                          record=[0, 30])
    assert result.diverged.tolist() == [False, True]
    assert result.diverged_at[1] == 20 and result.state[1].item() == 10.0
    assert torch.isclose(result.state[0], torch.tensor([3.0], dtype=torch.float64, device=device))


def test_noise_tuples_are_sliced_per_step(device):
    state = torch.zeros(3, dtype=torch.float64, device=device)

    def noise(k, _):
        ramp = torch.arange(k, dtype=torch.float64, device=device)[:, None].expand(k, 3)
        return ramp, 2 * ramp

    result = run_ensemble(lambda s, z: s + z[0] + z[1], state, 4, noise=noise, noise_chunk=2)
    assert torch.all(result.state == 3 * (0 + 1 + 0 + 1))


def test_tuple_states_and_custom_observables(device):
    a = torch.zeros(3, 2, dtype=torch.float64, device=device)
    b = torch.ones(3, dtype=torch.float64, device=device)
    result = run_ensemble(lambda s, _: (s[0] + 1, s[1] * 2), (a, b), 4, record=2,
                          observe=lambda s: {"sum": s[0].sum(1), "b": s[1]})
    assert result.records["sum"].shape == (3, 3)
    assert torch.all(result.records["b"][-1] == 16)


def test_bad_input_names_argument():
    state = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="n_steps=-1"):
        run_ensemble(random_walk, state, -1)
    with pytest.raises(ValueError, match="bound="):
        run_ensemble(random_walk, state, 1, bound=0)
    with pytest.raises(ValueError, match="record="):
        run_ensemble(random_walk, state, 5, record=[0, 7])
    with pytest.raises(ValueError, match="leading replica axis"):
        run_ensemble(random_walk, (state, torch.zeros(3)), 1)
    with pytest.raises(ValueError, match="state must be"):
        run_ensemble(random_walk, [1, 2], 1)


def test_replica_mean_and_error():
    samples = torch.arange(10, dtype=torch.float64)
    mean, error = replica_mean_and_error(samples)
    assert mean == 4.5 and torch.isclose(error, samples.std() / 10**0.5)
    with pytest.raises(ValueError, match="standard error"):
        replica_mean_and_error(samples[:1])
