# Two commands on a fresh Debian machine (as root): `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run demo test lint typecheck unit system-deps bench lock clean

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || scripts/system-deps.sh python
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || scripts/system-deps.sh python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

## run: serve the built-in demo organisation on :10135 (metrics, API, landing page)
run: $(STAMP)
	$(BIN)/exchange-firewall-exporter demo

## test: install what the tests need (Debian and PyPI), then ruff, mypy and pytest
test: system-deps $(STAMP) lint typecheck unit

system-deps:
	scripts/system-deps.sh test

lint: $(STAMP)
	$(BIN)/ruff check exporter tests bench dashboards deploy
	$(BIN)/ruff format --check exporter tests bench dashboards deploy
	$(BIN)/python -m dashboards.build --check

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP) system-deps
	$(BIN)/python -m bench.tcp_vs_blackbox
	$(BIN)/python -m bench.scrape
	$(BIN)/python -m bench.cycle
	$(BIN)/python -m bench.discovery

## lock: refresh the locks from pyproject.toml: requirements.lock (Linux, dev and tests) and
## requirements-runtime.lock (runtime only, every platform, with environment markers: the Windows build)
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev -o requirements.lock --python-version 3.11 --generate-hashes
	$(BIN)/uv pip compile pyproject.toml --universal -o requirements-runtime.lock --python-version 3.11 --generate-hashes

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
