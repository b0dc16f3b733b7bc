# The two commands of the README: `make book` and `make test`. Both set up .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# jupyter-cache keys a notebook on its own cells only; a change to the package must re-run the
# chapters, so the cache is dropped whenever this hash of the package source changes.
LIB_HASH = $(shell cat $$(find lib -name '*.py' | sort) pyproject.toml | sha256sum | cut -c1-16)
CACHE := _build/.jupyter_cache
NOTEBOOKS := $(sort $(wildcard book/*.ipynb))
NBVAL := $(BIN)/python -m pytest --nbval-lax --nbval-cell-timeout=300 -p no:cacheprovider
# `make test` runs the unit tests and the notebooks in one pytest session spread over JOBS processes
# (pytest-xdist; --dist loadfile keeps a notebook's cells, which share one kernel, in one process).
JOBS ?= 2
# `make seeds N=5 CHAPTERS="sgd_stochastic_process singular_limit"`; `make mutants CHAPTERS=...`
N ?= 20
CHAPTERS ?=

.PHONY: book test unit notebooks sphinx lint bench student clean cache-key browser-test timings seeds \
	mutants bench-compare

$(INSTALLED): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[book,test,cluster]"
	@touch $@

cache-key: $(INSTALLED)
	@mkdir -p _build
	@if [ "$$(cat $(CACHE).key 2>/dev/null)" != "$(LIB_HASH)" ]; then \
		rm -rf $(CACHE); echo "$(LIB_HASH)" > $(CACHE).key; echo "learndyn changed: chapters re-run"; fi

book: $(INSTALLED) cache-key
	$(BIN)/jupyter-book build . --builder html
	@echo "The book: $(CURDIR)/_build/html/index.html"

test: $(INSTALLED) lint cache-key
	$(NBVAL) -n $(JOBS) --dist loadfile --nb-jupyter-cache=$(CACHE) tests --ignore=tests/browser \
		$(NOTEBOOKS)
	$(MAKE) sphinx

# Notebook code is read in a column of 88 characters: ruff holds it to that width.
lint: $(INSTALLED)
	$(BIN)/ruff check lib tests bench book
	$(BIN)/ruff check --select E501 --line-length 88 \
		--config 'lint.per-file-ignores = {"*.ipynb" = ["E402"]}' $(NOTEBOOKS)

unit: $(INSTALLED)
	$(BIN)/python -m pytest tests --ignore=tests/browser

# Each notebook nbval executes and passes goes into the jupyter-cache (book/conftest.py), so the
# Sphinx build that follows does not execute it again; cache-key runs first, lest it drop them.
# Run times go to _build/notebook_timings.json, never into the tree.
notebooks: $(INSTALLED) cache-key
	$(NBVAL) --nb-jupyter-cache=$(CACHE) $(NOTEBOOKS)

sphinx: $(INSTALLED) cache-key
	$(BIN)/jupyter-book build . --builder html --warningiserror --nitpick --keep-going
	@echo "The book: $(CURDIR)/_build/html/index.html"

bench: $(INSTALLED)
	$(BIN)/python -m bench

# The benchmarks with neural-tangents timed beside learndyn, from an environment of its own
# (neural-tangents is no dependency of learndyn).
NTENV := _build/ntenv
bench-compare: $(INSTALLED)
	@test -x $(NTENV)/bin/python || $(PYTHON) -m venv $(NTENV)
	$(NTENV)/bin/python -m pip install --quiet "neural-tangents==0.6.5" "jax[cpu]==0.4.26" "jaxlib==0.4.26"
	NEURAL_TANGENTS_PYTHON=$(NTENV)/bin/python $(BIN)/python -m bench ndk

# The committed run times of the course page: every notebook under nbval, the times copied into
# book/notebook_timings.json, then the course page again, so that its cached copy shows them.
timings: $(INSTALLED) cache-key
	rm -f _build/notebook_timings.json
	$(MAKE) notebooks
	cp _build/notebook_timings.json book/notebook_timings.json
	$(NBVAL) -q --nb-jupyter-cache=$(CACHE) book/course.ipynb

# Every chapter under N seeds (from a fixed SeedSequence); writes tests/harness/SEEDS.md as it goes
# and resumes from _build/seeds/runs.jsonl. N=20 on all chapters takes about an hour.
seeds: $(INSTALLED)
	$(BIN)/python -m tests.harness.seeds --n $(N) $(if $(CHAPTERS),--chapters $(CHAPTERS))

# Each chapter under each mutant of tests/mutants/<chapter>.toml; writes tests/mutants/REPORT.md and
# fails if a mutant survived. Not part of `make test`.
mutants: $(INSTALLED)
	$(BIN)/python -m tests.harness.mutants $(if $(CHAPTERS),--chapters $(CHAPTERS))

# The built book in headless Chromium (Debian's chromium and chromium-driver, installed here when
# missing); screenshots of each chapter land in _build/screenshots/.
browser-test: $(INSTALLED)
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; fi
	@test -f _build/html/index.html || $(MAKE) book
	$(BIN)/python -m pytest tests/browser -p no:cacheprovider

# The hand-outs: every notebook without its solutions (prose and executed); scaffolds and checks stay.
student: $(INSTALLED)
	rm -rf student
	$(BIN)/python -m learndyn.teaching book student
	@echo "Hand-outs without solutions: $(CURDIR)/student/"

clean:
	rm -rf _build student
