"""The package as a researcher gets it: a wheel and an sdist, installed into a fresh environment.

The build runs on a copy of the sources, so the test writes nothing into the work tree. The fresh
environment sees the dependencies of this one (a ``.pth`` file) but not its ``learndyn``: what it
imports comes from the wheel alone.
"""

import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import learndyn

ROOT = Path(__file__).resolve().parents[1]

# One kernel of each module, called as a user would after `pip install learndyn`.
SMOKE = '''
import learndyn, torch
from pathlib import Path
assert "site-packages" in Path(learndyn.__file__).parts, learndyn.__file__
from learndyn import backend, checks, data, ensemble, flows, gaussian, plotting, stats, sweep, teaching
from learndyn import linear_networks, ndk, noise_injection, perceptron, singular_limit
g = backend.make_generator(backend.stream_seed(0, 1), device="cpu")
claims = checks.Claims("wheel", comparisons=1)
claims.agree("owens_t(0, 1) = 1/8", gaussian.owens_t(0.0, 1.0, device="cpu"), 0.125, rtol=1e-14)
y = flows.rk4(lambda t, w: -w, torch.ones(3, dtype=torch.float64), [0.0, 1.0], substeps=50)
claims.agree("rk4 of exp(-t)", y[-1], torch.full((3,), 0.36787944117144233), rtol=1e-7)
m = stats.replica_moments(torch.randn(100, 2, generator=g, dtype=torch.float64))
assert m.cov.shape == (2, 2)
assert [p.result for p in sweep.sweep(lambda a, seed: a + 1, {"a": [1, 2]})] == [2, 3]
assert teaching.strip_solutions_from_text("a\\n```{solution} x\\nb\\n```\\n") == "a\\n"
plotting.use_book_style()
x, labels = data.load_digits([0, 1], device="cpu")
classes = perceptron.GaussianClasses.make([1.0, 0.0], [-1.0, 0.0], torch.eye(2), torch.eye(2),
                                          device="cpu")
assert perceptron.sl_mean_update(torch.zeros(2, dtype=torch.float64), classes).shape == (2,)
assert float(noise_injection.toy_loss(1.0, 1.0, 0.0, 1.0, 0.0, 0.0)) == 0.0
assert linear_networks.sampling_factor(10, 10, replacement=False) == 0.0
assert ndk.input_gram(torch.eye(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))[0].shape == (2, 2)
network = singular_limit.DiagonalNetwork.make([[1.0, 2.0]], [1.0], device="cpu")
assert network.inputs.shape == (1, 2)
print("wheel smoke test passed")
'''


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert blocks, "the README has no python example"
    return blocks[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "lib", source / "lib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
                   check=True, capture_output=True, text=True)
    return dist


def test_wheel_and_sdist_hold_the_whole_package(built):
    wheel = next(built.glob("learndyn-*.whl"))
    sdist = next(built.glob("learndyn-*.tar.gz"))
    assert wheel.name.startswith(f"learndyn-{learndyn.__version__}-")
    modules = {p.name for p in (ROOT / "lib" / "learndyn").glob("*.py")}
    in_wheel = {Path(n).name for n in zipfile.ZipFile(wheel).namelist() if n.startswith("learndyn/")}
    assert modules <= in_wheel
    with tarfile.open(sdist) as archive:
        in_sdist = {Path(n).name for n in archive.getnames() if "/lib/learndyn/" in n}
    assert modules <= in_sdist


def test_the_wheel_runs_in_a_fresh_environment(built, tmp_path):
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # the dependencies of this environment, without its (editable) learndyn
    (Path(purelib) / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    for finder in Path(purelib).glob("*"):
        assert "learndyn" not in finder.name
    wheel = next(built.glob("learndyn-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--target", purelib, str(wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LEARNDYN_SEED")}
    env["MPLBACKEND"] = "Agg"
    for script in (readme_example(), SMOKE):
        run = subprocess.run([python, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
    assert "wheel smoke test passed" in run.stdout
