# The README's commands. Each target does its own set-up: scripts/venv.sh creates .venv and
# installs the pinned dependencies (pyproject.toml, requirements-broker.txt) when they change.
.PHONY: demo test test-stress bench

demo:
	@bash scripts/venv.sh
	.venv/bin/driftd demo

test:
	@bash scripts/venv.sh
	@bash scripts/debian-packages.sh
	.venv/bin/python -m pytest

test-stress:
	@bash scripts/venv.sh
	@bash scripts/debian-packages.sh
	.venv/bin/python -m pytest -m stress

bench:
	@bash scripts/venv.sh
	.venv/bin/python bench/ingest.py
