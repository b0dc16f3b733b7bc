"""Runners that execute the book's notebooks outside the test suite: ``make seeds``, ``make mutants``.

:mod:`.notebooks` executes one notebook in a fresh kernel and names the check that failed; the seed
sweep (:mod:`.seeds`) and the mutation test (:mod:`.mutants`) are built on it.
"""
