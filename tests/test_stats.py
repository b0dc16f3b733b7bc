"""learndyn.stats: replica moments with their standard errors, first crossings."""

import numpy as np
import pytest
import torch

from learndyn.backend import make_generator
from learndyn.stats import first_crossing, replica_moments


def test_replica_moments_match_a_known_gaussian(device):
    cov = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64, device=device)
    gen = make_generator(3, device=device)
    samples = torch.randn(3, 200_000, 2, generator=gen, dtype=torch.float64, device=device)
    samples = samples @ torch.linalg.cholesky(cov).T + 1.0
    moments = replica_moments(samples, replica_dim=1)
    assert moments.mean.shape == (3, 2) and moments.cov.shape == (3, 2, 2)
    assert torch.all((moments.mean - 1).abs() < 5 * moments.mean_se)
    assert torch.all((moments.cov - cov).abs() < 5 * moments.cov_se)
    # SE of a variance of a Gaussian: sqrt(2) var / sqrt(R)
    assert moments.cov_se[0, 0, 0].item() == pytest.approx(2**0.5 / 200_000**0.5, rel=0.02)
    assert moments.mean.device.type == device.type


def test_replica_moments_reject_bad_input():
    with pytest.raises(ValueError, match="replica_dim"):
        replica_moments(torch.zeros(5, 2), replica_dim=-1)
    with pytest.raises(ValueError, match="need >= 2"):
        replica_moments(torch.zeros(1, 2))


def test_first_crossing_interpolates_and_flags_misses():
    times = np.linspace(0, 1, 11)
    values = np.stack([times, 2 * times, 0.1 * times, np.ones(11)], -1)
    crossing = first_crossing(times, values, 0.5)
    assert crossing[:2] == pytest.approx([0.5, 0.25])
    assert np.isnan(crossing[2]) and np.isnan(crossing[3])
    with pytest.raises(ValueError, match="first axis"):
        first_crossing(times, values[:5], 0.5)
