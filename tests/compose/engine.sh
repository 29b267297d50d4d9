#!/usr/bin/env bash
# A Docker engine for the compose tests, and the two public base images.
#
# Sourced by run.sh. start_engine uses the engine that answers, or starts
# dockerd (and stop_engine stops only what it started). ensure_base_images
# pulls python:3.11-slim and redis:7, or, where the registry cannot be
# reached, builds stand-ins from a Debian bookworm root file system
# (debootstrap + docker import) under the same tags, so the shipped compose
# file and Dockerfile build unchanged. Stand-ins are kept between runs.

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STANDIN_BASE="sage-tasks-standin/bookworm:minbase"
STARTED_DOCKERD_PID=""
DOCKERD_LOG=""

say() { printf 'test-compose: %s\n' "$*" >&2; }

# elapsed seconds since the script started, for the timings
stamp() { printf '[%4ds] ' "$SECONDS"; }

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

start_engine() {
  if engine_answers; then
    say "$(stamp)using the Docker engine that answers"
    return 0
  fi
  DOCKERD_LOG="$(mktemp /tmp/sage-dockerd.XXXXXX.log)"
  # a child process group of its own, so stopping it cannot touch anything else
  setsid dockerd --pidfile /run/sage-tasks-dockerd.pid >"$DOCKERD_LOG" 2>&1 &
  STARTED_DOCKERD_PID=$!
  for _ in $(seq 1 60); do
    if engine_answers; then
      say "$(stamp)started dockerd (pid $STARTED_DOCKERD_PID, $(docker info -f '{{.Driver}}') driver)"
      return 0
    fi
    kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || break
    sleep 1
  done
  local why
  why="$(grep -iE 'level=(fatal|error)|failed|error' "$DOCKERD_LOG" | tail -n 1 | cut -c1-200)"
  stop_engine quietly
  echo "test-compose: cannot start dockerd: ${why:-no answer within 60 s}" >&2
  return 1
}

stop_engine() {
  [ -n "$STARTED_DOCKERD_PID" ] || return 0
  kill -TERM "$STARTED_DOCKERD_PID" 2>/dev/null || true
  for _ in $(seq 1 30); do
    kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || break
    sleep 1
  done
  kill -KILL "$STARTED_DOCKERD_PID" 2>/dev/null || true
  wait "$STARTED_DOCKERD_PID" 2>/dev/null || true
  [ "${1:-}" = quietly ] || say "$(stamp)stopped the dockerd it started"
  STARTED_DOCKERD_PID=""
  rm -f "$DOCKERD_LOG"
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# the Debian root file system every stand-in starts from
standin_base() {
  have_image "$STANDIN_BASE" && return 0
  local root
  root="$(mktemp -d /tmp/sage-standin.XXXXXX)"
  say "$(stamp)debootstrap bookworm (minbase) for the stand-in base images"
  if ! debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian \
      >"$root.log" 2>&1; then
    tail -n 5 "$root.log" >&2
    rm -rf "$root" "$root.log"
    return 1
  fi
  # the host's CA bundle, for HTTPS through whatever the host trusts (pip reads it)
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/sage-standin/ca.crt"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import - "$STANDIN_BASE" >/dev/null
  rm -rf "$root" "$root.log"
}

# pull an official image, or build its stand-in; never replaces a present image
base_image() {
  local tag="$1" standin="$2"
  if have_image "$tag"; then
    say "$(stamp)$tag is present"
    return 0
  fi
  if timeout 60 docker pull -q "$tag" >/dev/null 2>&1; then
    say "$(stamp)pulled $tag"
    return 0
  fi
  say "$(stamp)$tag cannot be pulled: building a stand-in from Debian bookworm"
  standin_base || return 1
  local log
  log="$(mktemp /tmp/sage-standin-build.XXXXXX.log)"
  if ! docker build -t "$tag" --label org.sage-tasks.standin=1 \
      --build-arg "BASE=$STANDIN_BASE" -f "$HERE/standins/$standin" "$HERE/standins" \
      >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

ensure_base_images() {
  base_image python:3.11-slim python.Dockerfile || return 1
  base_image redis:7 redis.Dockerfile || return 1
}
