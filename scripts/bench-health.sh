#!/usr/bin/env bash
# bench-health.sh: the health unit's ESP check on a boot not on trial,
# before and after e4ba7ed (default + fallback entries only), measured in
# a Debian 13 guest (OVMF + systemd-boot, vfat ESP, TCG) by
# BenchmarkHealthESP in qemu-tests: 5 good txs, each with its own kernel
# and initrd on the ESP; 5 rounds of old and new in alternating order,
# caches dropped before each run. Builds the bootctl of e4ba7ed^ in a
# temporary worktree. Prints the MEASURE lines and the benchmark's
# metrics. About 5 minutes.
#   BENCH_HEALTH_N   boots (default 1; each boot runs 5 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${BENCH_HEALTH_N:-1}
tmp=$(mktemp -d)
cleanup() { git worktree remove --force "$tmp/old" >/dev/null 2>&1 || true; rm -rf "$tmp"; }
trap cleanup EXIT
git worktree add --detach "$tmp/old" e4ba7ed^ >/dev/null 2>&1
(cd "$tmp/old" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w -buildid=' -o "$tmp/bootctl-old" ./bootctl)
out=$tmp/out
if ! TXBOOT_OLD_BOOTCTL=$tmp/bootctl-old go test -run '^$' -bench 'HealthESP' -benchtime "${n}x" -timeout 60m -v ./qemu-tests/ >"$out" 2>&1; then
	tail -n 80 "$out" >&2
	echo "bench-health: BenchmarkHealthESP failed" >&2
	exit 1
fi
sed -n 's/^ *health_bench_test.go:[0-9]*: MEASURE //p' "$out"
grep -E '^BenchmarkHealthESP' "$out" || true
