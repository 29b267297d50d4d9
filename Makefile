# One way to run things: CI and people call the same targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast test-slow lint demo bench reliability clean redis-server

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# tests start their own redis-server processes; install Debian's package when missing
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }

test: install redis-server
	$(BIN)/pytest -q -n 2 --dist loadfile

test-fast: install
	$(BIN)/pytest -q tests/unit

test-slow: install redis-server
	$(BIN)/pytest -q -m slow tests/slow

lint: install
	$(BIN)/ruff check sage_tasks tests bench workers
	$(BIN)/ruff format --check sage_tasks
	$(BIN)/mypy sage_tasks

demo: install redis-server
	$(BIN)/python examples/par-001/demo.py

bench: install redis-server
	$(BIN)/python bench/plan.py
	@for b in bench/commit.py bench/e2e.py; do [ -f $$b ] && $(BIN)/python $$b || true; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
