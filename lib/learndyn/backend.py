"""Device, dtype, seeds and input validation: the one place every kernel gets them from.

``LEARNDYN_DEVICE`` (``cpu`` or ``cuda``) overrides the device choice, ``LEARNDYN_SEED`` (an integer)
sets the seed of every generator the book makes. Both are read here and nowhere else.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Sequence

import numpy as np
import torch

DEVICE_VARIABLE = "LEARNDYN_DEVICE"
SEED_VARIABLE = "LEARNDYN_SEED"
DEFAULT_SEED = 0
DEFAULT_DTYPE = torch.float64

_DTYPES = {"float64": torch.float64, "double": torch.float64, "float32": torch.float32,
           "float": torch.float32}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to compute on.

    ``None`` means ``$LEARNDYN_DEVICE`` when it is set, else CUDA when it is available, else the CPU.
    Asking for CUDA on a machine without it is an error, not a silent fallback.
    """
    if device is None:
        device = os.environ.get(DEVICE_VARIABLE) or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a device name (use 'cpu' or 'cuda')") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} asked for, but CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={str(device)!r}: learndyn runs on 'cpu' or 'cuda'")
    return device


def placement(device, dtype, *values) -> tuple[torch.device, torch.dtype]:
    """The device and dtype a kernel computes on, from its ``device=`` and ``dtype=`` arguments.

    Without ``device``, the kernel follows its inputs, as torch's own operations do: the device of
    the first tensor among ``values`` (or inside a tuple or list among them), else
    :func:`resolve_device`'s default. ``dtype`` is :func:`resolve_dtype` of the argument (float64
    unless asked).
    """
    if device is None:
        flat = [item for value in values
                for item in (value if isinstance(value, (tuple, list)) else (value,))]
        device = next((item.device for item in flat if isinstance(item, torch.Tensor)), None)
    return resolve_device(device), resolve_dtype(dtype)


def resolve_dtype(dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The floating dtype to compute in: float64 unless the caller asks for float32."""
    if dtype is None:
        return DEFAULT_DTYPE
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r}: use 'float64' or 'float32'")
        return _DTYPES[dtype]
    if dtype not in (torch.float64, torch.float32):
        raise ValueError(f"dtype={dtype}: learndyn computes in torch.float64 or torch.float32")
    return dtype


def seed_from_environment() -> int:
    """The book's seed: ``$LEARNDYN_SEED`` when set, else 0."""
    text = os.environ.get(SEED_VARIABLE, "").strip()
    if not text:
        return DEFAULT_SEED
    try:
        return int(text)
    except ValueError as exc:
        raise ValueError(f"{SEED_VARIABLE}={text!r} is not an integer") from exc


def make_generator(seed: int | None = None, device=None) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (default: the book's seed).

    Distinct streams for distinct purposes come from :func:`stream_seed`.
    """
    seed = seed_from_environment() if seed is None else seed
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    generator = torch.Generator(device=resolve_device(device))
    generator.manual_seed(seed)
    return generator


def stream_seed(seed: int, stream: int) -> int:
    """The seed of stream number ``stream`` of the book's seed ``seed``: distinct, deterministic.

    Derived by ``numpy.random.SeedSequence([seed, stream])``, so no two (seed, stream) pairs share a
    generator, as ``seed + stream`` would for (0, 1) and (1, 0).
    """
    for value, name in ((seed, "seed"), (stream, "stream")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} must be a non-negative integer")
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def as_tensor(value, name: str, *, device=None, dtype=None, allow_nan: bool = False) -> torch.Tensor:
    """``value`` as a floating tensor on ``device``; NaN is rejected with an error naming ``name``.

    Without ``device``, a tensor stays on its own device (as torch's own operations keep theirs);
    anything else goes to :func:`resolve_device`'s default. ``dtype`` defaults to float64 either way.
    """
    if device is None and isinstance(value, torch.Tensor):
        device = value.device
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    try:
        tensor = torch.as_tensor(value, device=device, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name}={value!r} cannot be read as a tensor of numbers") from exc
    if not allow_nan and torch.isnan(tensor).any():
        raise ValueError(f"{name} contains NaN: {_summary(tensor)}")
    return tensor


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """A finite positive (or, with ``allow_zero``, non-negative) number, else ``ValueError``."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}={value!r} is not a number") from exc
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} must be finite and {bound}")
    return number


_VALIDATED: dict[int, tuple[weakref.ref, int]] = {}


def check_nonnegative(value, name: str, *, device=None, dtype=None) -> torch.Tensor:
    """``value`` as a tensor of finite, non-negative numbers on ``device``, else ``ValueError``.

    A kernel that runs once per step may call this on every step: a tensor is read back to the host
    (a device synchronization) only the first time it is seen, and again only after it was modified
    in place; later calls with the same, unchanged tensor read nothing.
    """
    if not isinstance(value, torch.Tensor):  # checked on the host, before it moves to the device
        host = as_tensor(value, name, device="cpu", dtype=torch.float64)
        _check_nonnegative_values(host, name)
        return host.to(device=resolve_device(device), dtype=resolve_dtype(dtype))
    seen = _VALIDATED.get(id(value))
    if seen is None or seen[0]() is not value or seen[1] != value._version:
        _check_nonnegative_values(value, name)
        key = id(value)
        _VALIDATED[key] = (weakref.ref(value, lambda _ref: _VALIDATED.pop(key, None)), value._version)
    return value.to(device=value.device if device is None else resolve_device(device),
                    dtype=value.dtype if dtype is None else resolve_dtype(dtype))


def _check_nonnegative_values(tensor: torch.Tensor, name: str) -> None:
    if not bool(((tensor >= 0) & torch.isfinite(tensor)).all()):
        raise ValueError(f"{name} must be finite and >= 0, got {_summary(tensor)}")


def check_count(value: int, name: str, *, minimum: int = 1) -> int:
    """An integer at least ``minimum``, else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return value


def check_shape(tensor: torch.Tensor, shape: Sequence[int | None], name: str) -> torch.Tensor:
    """``tensor`` with the trailing dimensions ``shape`` (``None`` matches any size)."""
    trailing = tuple(tensor.shape[tensor.dim() - len(shape):]) if tensor.dim() >= len(shape) else None
    if trailing is None or any(s is not None and s != t for s, t in zip(shape, trailing, strict=True)):
        want = "(..., " + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {want}")
    return tensor


def check_covariance(matrix: torch.Tensor, name: str, *, strict: bool = True) -> torch.Tensor:
    """A symmetric positive-definite (or, with ``strict=False``, semi-definite) matrix batch."""
    if matrix.dim() < 2 or matrix.shape[-1] != matrix.shape[-2]:
        raise ValueError(f"{name} has shape {tuple(matrix.shape)}, expected square matrices (..., n, n)")
    scale = matrix.abs().amax().clamp_min(1.0)
    eps = 1e3 * torch.finfo(matrix.dtype).eps * scale
    if (matrix - matrix.transpose(-1, -2)).abs().amax() > eps:
        raise ValueError(f"{name} is not symmetric: {_summary(matrix)}")
    smallest = torch.linalg.eigvalsh(matrix).amin()
    if smallest <= 0 if strict else smallest < -eps:
        kind = "positive definite" if strict else "positive semi-definite"
        raise ValueError(f"{name} is not {kind}: its smallest eigenvalue is {smallest.item():.3g}")
    return matrix


def _summary(tensor: torch.Tensor) -> str:
    flat = tensor.detach().flatten()
    shown = ", ".join(f"{v:.4g}" for v in flat[:6].tolist())
    return f"tensor of shape {tuple(tensor.shape)} [{shown}{', ...' if flat.numel() > 6 else ''}]"


__all__ = [
    "placement", "resolve_device", "resolve_dtype", "seed_from_environment", "make_generator", "stream_seed",
    "as_tensor", "check_positive", "check_nonnegative", "check_count", "check_shape", "check_covariance"
]
