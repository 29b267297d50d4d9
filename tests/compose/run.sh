#!/usr/bin/env bash
# make test-compose: the shipped docker-compose.yml and workers/Dockerfile, run
# for real (tests/compose/test_compose.py). Installs the Docker engine,
# docker-compose and debootstrap when missing, uses the engine that answers or
# starts dockerd (and stops only what it started), provides the base images
# (pulled, or stand-ins built here), then runs the tests. Exits non-zero, with
# one line saying why, when there is no engine to run them on.
set -uo pipefail
cd "$(dirname "$0")/../.."
export TEST_COMPOSE_STARTED="$(date +%s)"
source tests/compose/engine.sh

missing=""
command -v dockerd >/dev/null 2>&1 || missing="$missing docker.io"
command -v docker >/dev/null 2>&1 || missing="$missing docker.io"
command -v docker-compose >/dev/null 2>&1 || missing="$missing docker-compose"
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
if [ -n "$missing" ]; then
  say "$(stamp)installing Debian packages:$missing"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      $missing >/dev/null \
    || { echo "test-compose: cannot install$missing" >&2; exit 1; }
fi

cleanup() {
  # whatever a crashed test left of its project; the images stay as a cache
  if engine_answers; then
    REDIS_PASSWORD=x FLOWER_BASIC_AUTH=x:x REPO_PATH=/nonexistent \
      docker-compose -p sage-tasks-compose-test down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  stop_engine
}
trap cleanup EXIT

start_engine || exit 1
ensure_base_images || { echo "test-compose: cannot provide the base images" >&2; exit 1; }
say "$(stamp)base images ready"
.venv/bin/pytest -q -s -p no:cacheprovider -o addopts= --timeout 1800 tests/compose
rc=$?
say "$(stamp)tests done (exit $rc)"
exit $rc
