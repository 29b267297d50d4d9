# One way to run things: CI and people call the same targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-compose test-fast test-slow lint demo bench bench-commands bench-local \
	reliability clean redis-server system-deps flower

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev]'
	@# an editable install has no bytecode yet; where PYTHONDONTWRITEBYTECODE is set, every
	@# command would compile the package again (a tenth of a second each): compile it once
	$(BIN)/python -m compileall -q sage_tasks
	touch $(STAMP)

install: $(STAMP)

# what the tests run besides Python: their own redis-server processes, git,
# docker-compose (validates the compose file, no engine needed),
# systemd-analyze (verifies the units), chromium (opens the HTML report headless);
# Debian packages, installed when missing
SYSTEM_TOOLS := redis-server:redis-server git:git docker-compose:docker-compose \
	systemd-analyze:systemd ip:iproute2 chromium:chromium
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi

redis-server: system-deps

test: install system-deps
	$(BIN)/pytest -q -n 2 --dist loadfile --ignore=tests/compose

# docker-compose.yml and workers/Dockerfile run for real: builds the image, brings
# the stack up on a Docker engine (started here if none answers, with stand-ins for
# base images Docker Hub cannot provide) and runs a fleet's life through it
test-compose: install system-deps
	bash tests/compose/run.sh

test-fast: install
	$(BIN)/pytest -q tests/unit

test-slow: install system-deps
	$(BIN)/pytest -q -m slow tests/slow

lint: install
	$(BIN)/ruff check sage_tasks tests bench workers
	$(BIN)/ruff format --check sage_tasks tests bench examples
	$(BIN)/mypy sage_tasks tests

demo: install redis-server
	$(BIN)/python examples/par-001/demo.py

bench: install redis-server
	$(BIN)/python bench/plan.py
	$(BIN)/python bench/makespan.py
	@for b in bench/commit.py bench/e2e.py bench/bigtree.py bench/failover.py; do [ -f $$b ] && $(BIN)/python $$b || true; done
	$(BIN)/python bench/commands.py

# every command a user types, each a whole process on 100,000 tickets, against networkx
bench-commands: install redis-server
	$(BIN)/python bench/commands.py

# a whole --local run of 10,000 no-op tickets, and the peak memory of each process
bench-local: install redis-server
	$(BIN)/python bench/local_run.py --tickets 10000

# Flower for the broker the workers use (SAGE_BROKER_URL), behind basic auth
# (FLOWER_BASIC_AUTH=user:password; it refuses to start without), on 127.0.0.1
FLOWER_PORT    ?= 5555
FLOWER_ADDRESS ?= 127.0.0.1
flower: install
	$(BIN)/sage-worker flower --port $(FLOWER_PORT) --address $(FLOWER_ADDRESS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
