#!/bin/sh
# The container's command is a sage-worker role and its options, e.g.
# "tickets --concurrency 4", "commit --repo /repo" or "flower --address 0.0.0.0".
set -e
exec sage-worker "$@"
