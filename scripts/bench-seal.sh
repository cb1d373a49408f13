#!/usr/bin/env bash
# bench-seal.sh: sealed /usr, measured in QEMU (Debian 13's cloud kernel,
# 1 vCPU, TCG) by BenchmarkSealVerify in qemu-tests: initagent's verify=
# phase sealed / fast / full on the Debian 13 /usr and on it plus 120,000
# small files, what `bootctl seal` costs in the guest, commit with fs-verity
# enabling against commit without (in the guest: this host's kernel has no
# fs-verity), and the image size per tx. Prints the MEASURE lines and the
# benchmark's metrics. About 20-30 minutes (the seal of 128k objects and the
# big tree's full verify dominate).
#   BENCH_SEAL_N   boots per tree and mode (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${BENCH_SEAL_N:-1}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! go test -run '^$' -bench 'SealVerify' -benchtime "${n}x" -timeout 120m -v ./qemu-tests/ >"$out" 2>&1; then
	tail -n 80 "$out" >&2
	echo "bench-seal: BenchmarkSealVerify failed" >&2
	exit 1
fi
sed -n 's/^ *seal_bench_test.go:[0-9]*: MEASURE //p' "$out"
grep -E '^BenchmarkSealVerify' "$out" || true
