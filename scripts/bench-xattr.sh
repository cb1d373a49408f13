#!/usr/bin/env bash
# bench-xattr.sh: what recording extended attributes costs. The same trees
# are committed and fast-verified by this checkout's bootctl and by the
# bootctl of BENCH_BASE (default: the last commit before manifests carried
# xattrs), side by side in one run. Prints one markdown table of medians
# of 3 (seconds) and the ratio new/base.
#
# Trees (cached by bench-lib.sh): the minbase /usr and the big /usr copy
# as they are (a few xattrs at most: the cost is one llistxattr a file),
# and a copy of the big tree with a user.* xattr on every file (new only:
# the base drops them).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=$PWD/.cache/bench
RUN=$CACHE/run-xattr
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
BASE_REV=${BENCH_BASE:-b01e8ec}
BASE=$CACHE/bootctl-$BASE_REV
if [ ! -x "$BASE" ]; then
  src=$(mktemp -d)
  git archive "$BASE_REV" | tar x -C "$src"
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -o "$BASE" ./bootctl)
  rm -rf "$src"
fi
rm -rf "$RUN"; mkdir -p "$RUN"

if [ ! -d "$CACHE/big-xattr/usr" ]; then
  echo "bench: a copy of the big tree with a user.* xattr on every file (once)" >&2
  rm -rf "$CACHE/big-xattr.tmp"
  cp -a "$CACHE/big" "$CACHE/big-xattr.tmp"
  go run ./scripts/benchtool setxattrs "$CACHE/big-xattr.tmp/usr"
  mv "$CACHE/big-xattr.tmp" "$CACHE/big-xattr"
fi

# row TREE LABEL BIN...: commit (empty store) and fast verify, 3 times each.
row() {
  local src=$1 label=$2 bin c v
  shift 2
  local cols=()
  for bin in "$@"; do
    c=(); v=()
    for _ in 1 2 3; do
      rm -rf "$RUN/sys"
      c+=("$(t "$bin" --root "$RUN/sys" commit "$src" --summary bench)")
      v+=("$(t "$bin" --root "$RUN/sys" verify 1)")
    done
    cols+=("$(med "${c[@]}")" "$(med "${v[@]}")")
  done
  if (($# == 2)); then
    echo "| $label | commit, empty store | ${cols[2]} | ${cols[0]} | $(ratio "${cols[2]}" "${cols[0]}") |"
    echo "| $label | fast verify | ${cols[3]} | ${cols[1]} | $(ratio "${cols[3]}" "${cols[1]}") |"
  else
    echo "| $label | commit, empty store | ${cols[0]} | - | - |"
    echo "| $label | fast verify | ${cols[1]} | - | - |"
  fi
}

echo "| tree | operation | with xattrs s | before ($BASE_REV) s | ratio |"
echo "|---|---|---|---|---|"
for tree in minbase big; do
  warm "$CACHE/$tree/usr"
  row "$CACHE/$tree/usr" "$tree ($(find "$CACHE/$tree/usr" | wc -l) entries)" "$BASE" "$BOOTCTL"
done
warm "$CACHE/big-xattr/usr"
row "$CACHE/big-xattr/usr" "big, a user.* xattr on every file" "$BOOTCTL"
rm -rf "$RUN"
