#!/usr/bin/env bash
# make demo: commit, verify and boot transactions in QEMU, with a self-heal.
set -euo pipefail
cd "$(dirname "$0")/.."
exec go run ./qemu-tests/cmd/demo "$@"
