"""Reference NNGP and NTK kernels from neural-tangents, for tests/test_ndk.py.

neural-tangents is not a dependency of learndyn; this script runs in an environment of its own:

    python3.11 -m venv /tmp/ntenv
    /tmp/ntenv/bin/pip install "neural-tangents==0.6.5" "jax[cpu]==0.4.26" "jaxlib==0.4.26"
    /tmp/ntenv/bin/python tests/reference/make_nt_kernels.py

It writes ``tests/reference/nt_kernels.json``: the inputs and, for ReLU and erf, W_std = 1 and 1.5 and
depths L = 1, 2, 3, the infinite-width kernels of ``serial(Dense(512, W_std, b_std=0), act) * L,
Dense(1, W_std, b_std=0)`` in float64. neural-tangents uses the NTK parameterization: the gradient
kernel is taken with respect to standard-normal weights scaled by W_std / sqrt(fan_in).
"""

import json
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
from neural_tangents import stax  # noqa: E402

OUT = Path(__file__).with_name("nt_kernels.json")
ACTIVATIONS = {"relu": stax.Relu, "erf": stax.Erf}


def main():
    rng = np.random.default_rng(20261201)
    x1 = rng.normal(size=(6, 7))
    x2 = np.concatenate([x1[:2], 0.5 * x1[2:3], rng.normal(size=(3, 7))])  # shared rows: the diagonal
    cases = []
    for name, activation in ACTIVATIONS.items():
        for w_std in (1.0, 1.5):
            for depth in (1, 2, 3):
                layers = []
                for _ in range(depth):
                    layers += [stax.Dense(512, W_std=w_std, b_std=0.0), activation()]
                _, _, kernel_fn = stax.serial(*layers, stax.Dense(1, W_std=w_std, b_std=0.0))
                kernels = kernel_fn(x1, x2, ("nngp", "ntk"))
                cases.append({"activation": name, "w_std": w_std, "depth": depth,
                              "nngp": np.asarray(kernels.nngp).tolist(),
                              "ntk": np.asarray(kernels.ntk).tolist()})
    OUT.write_text(json.dumps({"x1": x1.tolist(), "x2": x2.tolist(), "cases": cases,
                               "source": "neural-tangents 0.6.5, jax 0.4.26, float64"}) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
