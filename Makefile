# The README's commands. Each target does its own set-up: scripts/venv.sh creates .venv and
# installs the pinned dependencies (pyproject.toml, requirements-broker.txt) when they change.
.PHONY: demo lint test test-stress bench

demo:
	@bash scripts/venv.sh
	.venv/bin/driftd demo

# The checks a change must pass (CONTRIBUTING.md), cheapest first; .pre-commit-config.yaml runs the same.
lint:
	@bash scripts/venv.sh
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/lint-imports

# Two workers: most integration tests wait on streams and timers, so a second one overlaps them (the
# slowest pairs share the 2 cores). --dist worksteal rebalances the long tests at the end.
test: lint
	@bash scripts/debian-packages.sh
	.venv/bin/python -m pytest -n 2 --dist worksteal

test-stress:
	@bash scripts/venv.sh
	@bash scripts/debian-packages.sh
	.venv/bin/python -m pytest -m stress

bench:
	@bash scripts/venv.sh
	.venv/bin/python bench/ingest.py
