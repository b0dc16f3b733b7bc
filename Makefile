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

.PHONY: book test unit notebooks sphinx lint bench student clean cache-key browser-test

$(INSTALLED): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[book,test]"
	@touch $@

cache-key: $(INSTALLED)
	@mkdir -p _build
	@if [ "$$(cat $(CACHE).key 2>/dev/null)" != "$(LIB_HASH)" ]; then \
		rm -rf $(CACHE); echo "$(LIB_HASH)" > $(CACHE).key; echo "learndyn changed: chapters re-run"; fi

book: $(INSTALLED) cache-key
	$(BIN)/jupyter-book build . --builder html
	@echo "The book: $(CURDIR)/_build/html/index.html"

test: $(INSTALLED) lint unit notebooks sphinx

# Notebook code is read in a column of 88 characters: ruff holds it to that width.
lint: $(INSTALLED)
	$(BIN)/ruff check lib tests bench book
	$(BIN)/ruff check --select E501 --line-length 88 \
		--config 'lint.per-file-ignores = {"*.ipynb" = ["E402"]}' book

unit: $(INSTALLED)
	$(BIN)/python -m pytest tests --ignore=tests/browser

notebooks: $(INSTALLED)
	$(BIN)/python -m pytest --nbval-lax --nbval-cell-timeout=300 -p no:cacheprovider $(NOTEBOOKS)

sphinx: $(INSTALLED) cache-key
	$(BIN)/jupyter-book build . --builder html --warningiserror --nitpick --keep-going
	@echo "The book: $(CURDIR)/_build/html/index.html"

bench: $(INSTALLED)
	$(BIN)/python -m bench

# The built book in headless Chromium (Debian's chromium and chromium-driver, installed here when
# missing); screenshots of each chapter land in _build/screenshots/.
browser-test: $(INSTALLED)
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; fi
	@test -f _build/html/index.html || $(MAKE) book
	$(BIN)/python -m pytest tests/browser -p no:cacheprovider

student: $(INSTALLED)
	$(BIN)/python -m learndyn.teaching book student
	@echo "Hand-outs without solutions: $(CURDIR)/student/"

clean:
	rm -rf _build student
