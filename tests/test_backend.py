import pytest
import torch

from learndyn import backend


def test_device_defaults_to_cpu_without_cuda(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the default is CUDA")
    assert backend.resolve_device().type == "cpu"


def test_device_variable_overrides(monkeypatch):
    monkeypatch.setenv("LEARNDYN_DEVICE", "cpu")
    assert backend.resolve_device().type == "cpu"


def test_bad_device_names_argument():
    with pytest.raises(ValueError, match="device='tpu9'"):
        backend.resolve_device("tpu9")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_an_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        backend.resolve_device("cuda")


def test_dtype_default_and_choices():
    assert backend.resolve_dtype() is torch.float64
    assert backend.resolve_dtype("float32") is torch.float32
    with pytest.raises(ValueError, match="dtype="):
        backend.resolve_dtype(torch.int64)


def test_seed_from_environment(monkeypatch):
    assert backend.seed_from_environment() == 0
    monkeypatch.setenv("LEARNDYN_SEED", "17")
    assert backend.seed_from_environment() == 17
    monkeypatch.setenv("LEARNDYN_SEED", "seventeen")
    with pytest.raises(ValueError, match="LEARNDYN_SEED"):
        backend.seed_from_environment()


def test_generators_same_seed_same_stream(device):
    a = torch.randn(5, generator=backend.make_generator(3, device=device), device=device)
    b = torch.randn(5, generator=backend.make_generator(3, device=device), device=device)
    c = torch.randn(5, generator=backend.make_generator(4, device=device), device=device)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generator_rejects_negative_seed():
    with pytest.raises(ValueError, match="seed=-1"):
        backend.make_generator(-1)


def test_as_tensor_rejects_nan_by_name():
    with pytest.raises(ValueError, match="weights contains NaN"):
        backend.as_tensor([1.0, float("nan")], "weights")
    with pytest.raises(ValueError, match="weights="):
        backend.as_tensor("abc", "weights")


@pytest.mark.parametrize("value", [-1.0, 0.0, float("inf"), float("nan"), "x"])
def test_check_positive(value):
    with pytest.raises(ValueError, match="sigma="):
        backend.check_positive(value, "sigma")


def test_check_positive_allows_zero_when_asked():
    assert backend.check_positive(0, "lam", allow_zero=True) == 0.0


def test_check_count():
    assert backend.check_count(3, "n") == 3
    for bad in (0, 2.5, True, "3"):
        with pytest.raises(ValueError, match="n="):
            backend.check_count(bad, "n")


def test_check_shape_names_argument():
    with pytest.raises(ValueError, match=r"cov has shape \(2, 3\), expected \(\.\.\., 2, 2\)"):
        backend.check_shape(torch.zeros(2, 3), (2, 2), "cov")


def test_check_covariance():
    backend.check_covariance(torch.eye(3, dtype=torch.float64), "cov")
    with pytest.raises(ValueError, match="cov is not positive definite"):
        backend.check_covariance(torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64)), "cov")
    with pytest.raises(ValueError, match="cov is not symmetric"):
        backend.check_covariance(torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=torch.float64), "cov")
    with pytest.raises(ValueError, match="square"):
        backend.check_covariance(torch.zeros(2, 3), "cov")
    semi = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    backend.check_covariance(semi, "cov", strict=False)


def test_check_nonnegative_reads_a_tensor_once_and_again_after_a_change():
    from test_device_path import host_reads

    from learndyn.backend import check_nonnegative

    lam = torch.tensor([0.1, 0.2], dtype=torch.float64)
    with host_reads() as count:
        for _ in range(5):
            assert check_nonnegative(lam, "lam") is lam
    assert count[0] == 1
    lam[0] = -1.0
    with pytest.raises(ValueError, match="lam must be finite and >= 0"):
        check_nonnegative(lam, "lam")
    with pytest.raises(ValueError, match="sigma must be finite"):
        check_nonnegative([0.5, float("inf")], "sigma")
    assert check_nonnegative(0.5, "sigma", dtype=torch.float32).dtype == torch.float32
