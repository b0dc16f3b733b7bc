"""Run every benchmark: ``python -m bench`` (or ``make bench``); ``python -m bench NAME`` runs one.

Each ``bench/bench_*.py`` module has ``run(device) -> list[Comparison]``; each line printed is a
figure, its baseline and their ratio, measured in the same run. ``bench_notebooks`` runs every
notebook against its 90 s budget. The exit status is 1 when a comparison misses its target.
"""

import importlib
import pkgutil
import sys
from pathlib import Path

import torch

from learndyn.backend import resolve_device


def main(selected: list[str]) -> int:
    device = resolve_device()
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads")
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                   if m.name.startswith("bench_"))
    unknown = [s for s in selected if f"bench_{s}" not in names and s not in names]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {names}")
    missed = []
    for name in names:
        if selected and name not in selected and name.removeprefix("bench_") not in selected:
            continue
        print(f"\n[{name}]")
        module = importlib.import_module(f"bench.{name}")
        for comparison in module.run(device):
            print(comparison.line(), flush=True)
            if comparison.target is not None and comparison.ratio < comparison.target:
                missed.append(f"{name}: {comparison.name} vs {comparison.baseline_name}")
    if missed:
        print("\ntargets not met:\n  " + "\n  ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
