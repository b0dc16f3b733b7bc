"""Time neural-tangents' infinite-width NNGP + NTK on the inputs in a .npy file (run by bench_ndk).

This script runs in an environment of its own that has neural-tangents (``make bench-compare`` builds
one in ``_build/ntenv``); it prints the best of ``repeat`` jit-compiled timings, in seconds, as JSON.
Usage: ``python bench/neural_tangents_timing.py INPUTS.npy DEPTH REPEAT``.
"""

import json
import sys
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
from neural_tangents import stax  # noqa: E402


def main(path: str, depth: int, repeat: int) -> None:
    x = jax.numpy.asarray(np.load(path))
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(512, W_std=1.0, b_std=0.0), stax.Relu()]
    _, _, kernel_fn = stax.serial(*layers, stax.Dense(1, W_std=1.0, b_std=0.0))
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    kernel_fn(x, x, get=("nngp", "ntk")).ntk.block_until_ready()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        kernel_fn(x, x, get=("nngp", "ntk")).ntk.block_until_ready()
        best = min(best, time.perf_counter() - start)
    print(json.dumps({"seconds": best, "jax": jax.__version__}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
