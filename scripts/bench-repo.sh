#!/usr/bin/env bash
# Repository benchmarks: txboot's static repository (txstore/repo) vs
# Debian's ostree archive repositories, same trees, same run, same machine.
# Prints one markdown table (seconds, and txboot's time as a ratio of
# ostree's).
#
# Trees: the same two as scripts/bench.sh, cached in the same place
# (.cache/bench): (a) a debootstrap --variant=minbase /usr; (b) a copy of
# this machine's /usr/lib and /usr/share (at least 120,000 entries).
# Everything else is made in .cache/bench/repo-run and removed at the end.
#
# Sections: publish (below); pull benchmarks are appended after it.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=$PWD/.cache/bench
RUN=$CACHE/repo-run
mkdir -p "$CACHE"
export DEBIAN_FRONTEND=noninteractive
command -v ostree >/dev/null || apt-get install -y -qq ostree >/dev/null
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
go build -o bin/bootctl ./bootctl
BOOTCTL=$PWD/bin/bootctl

if [ ! -d "$CACHE/minbase/usr" ]; then
  echo "bench: debootstrap --variant=minbase (once, cached in $CACHE/minbase)" >&2
  rm -rf "$CACHE/minbase.tmp"
  suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  debootstrap --variant=minbase "$suite" "$CACHE/minbase.tmp" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1
  mkdir -p "$CACHE/minbase"
  mv "$CACHE/minbase.tmp/usr" "$CACHE/minbase/usr"
  rm -rf "$CACHE/minbase.tmp"
fi
if [ ! -d "$CACHE/big/usr" ]; then
  echo "bench: copying /usr/lib and /usr/share (once, cached in $CACHE/big)" >&2
  rm -rf "$CACHE/big.tmp"; mkdir -p "$CACHE/big.tmp/usr"
  for d in lib share include bin; do
    cp -a "/usr/$d" "$CACHE/big.tmp/usr/"
    [ "$(find "$CACHE/big.tmp/usr" | wc -l)" -ge 120000 ] && break
  done
  mv "$CACHE/big.tmp" "$CACHE/big"
fi

now() { date +%s.%N; }
# t CMD...: run CMD after a sync, print its wall time in seconds.
t() {
  sync
  local t0 t1
  t0=$(now)
  "$@" >/dev/null 2>"$RUN/err" || { echo "bench: $* failed:" >&2; cat "$RUN/err" >&2; exit 1; }
  t1=$(now)
  echo "$t0 $t1" | awk '{printf "%.2f", $2-$1}'
}
ratio() { echo "$1 $2" | awk '{ if ($2 > 0) printf "%.2f×", $1/$2; else print "-" }'; }
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
warm() { find "$1" -type f -print0 | xargs -0 -P2 -n 256 cat >/dev/null; }

echo "| tree | entries / size | operation | txboot s | reference | ref s | ratio | target |"
echo "|---|---|---|---|---|---|---|---|"

# --- publish ---------------------------------------------------------------
# txboot: the tree is committed into a store (not timed), then
# `bootctl publish --repo R` into an empty repository is timed (objects
# zstd-compressed where it pays, syncfs, manifest, table, index).
# ostree: `ostree init --mode=archive` (not timed), then `ostree commit`
# of the tree into it (zlib-compressed objects, fsynced) is timed. Both
# read their input from the page cache. Medians of 3 runs for the small
# tree, 1 for the big one.
for tree in minbase big; do
  src=$CACHE/$tree/usr
  entries=$(find "$src" | wc -l)
  size=$(du -sh "$src" | cut -f1)
  reps=1; [ "$tree" = minbase ] && reps=3
  rm -rf "$RUN"; mkdir -p "$RUN"
  warm "$src"
  "$BOOTCTL" --root "$RUN/sys" commit "$src" --summary bench >/dev/null
  p1=(); r1=()
  for _ in $(seq $reps); do
    rm -rf "$RUN/repo" "$RUN/ostree"
    ostree init --mode=archive --repo="$RUN/ostree"
    p1+=("$(t "$BOOTCTL" --root "$RUN/sys" publish --repo "$RUN/repo")")
    r1+=("$(t ostree commit --repo="$RUN/ostree" --branch=b --tree=dir="$src" --no-xattrs)")
  done
  p2=$(t "$BOOTCTL" --root "$RUN/sys" publish --repo "$RUN/repo")
  stored=$(du -sh "$RUN/repo" | cut -f1); ostored=$(du -sh "$RUN/ostree" | cut -f1)
  L="| $tree | $entries / $size"
  ours=$(med "${p1[@]}"); theirs=$(med "${r1[@]}")
  echo "$L | publish, empty repo ($stored; ostree $ostored) | $ours | ostree commit, archive repo | $theirs | $(ratio "$ours" "$theirs") | ≤ 0.5× |"
  echo "$L | publish again (nothing new) | $p2 | - | - | - | |"
done
rm -rf "$RUN"

# --- pull ------------------------------------------------------------------
# (appended by the pull benchmarks)

echo
echo "$(nproc) cores, $(uname -r), ostree $(ostree --version | awk '/Version/{print $2}' | tr -d "'"), $(date -u +%Y-%m-%d)"
