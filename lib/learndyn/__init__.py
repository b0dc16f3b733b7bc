"""learndyn: compute kernels for the executable lecture notes on noise and learning dynamics.

Core modules: :mod:`~learndyn.backend` (device, dtype, seeds, validation), :mod:`~learndyn.ensemble`
(replica-batched simulation), :mod:`~learndyn.flows` (moment/flow equations), :mod:`~learndyn.gaussian`
(Gaussian expectations), :mod:`~learndyn.stats` (replica moments with standard errors),
:mod:`~learndyn.checks` (the ledger every claim of the book goes through), :mod:`~learndyn.sweep`
(parameter grids), :mod:`~learndyn.data`, :mod:`~learndyn.plotting` and :mod:`~learndyn.teaching`
(exercises: checks of a student's answer, hand-outs without solutions). Each chapter has its own
module built on these; the core never imports a chapter module.
"""

from .backend import make_generator, resolve_device, resolve_dtype, seed_from_environment

__version__ = "0.2.0"
__all__ = ["make_generator", "resolve_device", "resolve_dtype", "seed_from_environment"]
