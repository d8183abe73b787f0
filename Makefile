# The README names two commands: `make demo` and `make test`. Both set everything up first.
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup demo test lint bench protos clean conformance

setup:
	@bash scripts/setup.sh

demo: setup
	@$(PY) -m clustermesh_cli.main demo

test: setup lint
	@$(PY) -m pytest -q

lint: setup
	@.venv/bin/ruff check .
	@.venv/bin/mypy

bench: setup
	@$(PY) -m benchmarks

protos: setup
	@$(PY) scripts/gen_etcd_protos.py

clean:
	rm -rf .venv .setup.log .pytest_cache .mypy_cache

conformance: setup
	@$(PY) -m lab.conformance
