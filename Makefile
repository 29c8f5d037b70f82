# The two commands of a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test test-heavy test-readme test-all demo bench gpu-check docs clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[test,openvino,executorch,ray]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

# The whole-chain checks `make test` leaves out (about 9 minutes; CI runs them).
test-heavy: install
	$(BIN)/python -m pytest -q -m "heavy and not slow"

# Every example of README.md and of the docs pages (tests/conftest.py DOCS) that needs no GPU, run as written, and the demo (about 14 minutes).
test-readme: install
	$(BIN)/python -m pytest -q -m readme

test-all: install
	$(BIN)/python -m pytest -q -m ""

demo: install
	$(BIN)/lowformer demo $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(if $(DATA),--data $(DATA)) --out demo-out

bench: install
	$(BIN)/python benchmarks/run.py

# The GPU machine's checks (one NVIDIA GPU, under 8 minutes; exit 3 at once without a GPU).
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py --out gpu-check-out

# The manual as a site (mkdocs.yml, docs/): MkDocs + Material from the `docs` extra, into site/;
# --strict fails on any warning (a broken link or anchor, a page missing from the nav).
DOCS_STAMP := $(VENV)/.docs-stamp

$(DOCS_STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) artifacts demo-out gpu-check-out .pytest_cache site
