#!/usr/bin/env bash
# bench-run.sh: what `bootctl run` costs as /usr grows, against the way a
# tree was changed before it (copy the tx's /usr, change the copy, commit
# it). Both make the same one-file change to tx 1 of a store holding the
# minbase /usr (~8k entries) or the big /usr (~120k), side by side in one
# run; medians of 3 (seconds). The run's own commit (CommitLayer: the
# changed files staged, the new tree blitted from the manifest) is
# reported apart from the whole run (namespace, overlay, /etc copies).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=$PWD/.cache/bench
RUN=$CACHE/run-run
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
((EUID == 0)) || { echo "bench-run: needs root (namespaces, overlayfs)" >&2; exit 1; }
rm -rf "$RUN"; mkdir -p "$RUN"

# root LABEL TREE: a system root whose /usr is tx 1 (a copy of TREE with
# the host's dash as /bin/sh when it has none), /etc a copy of the host's.
root() {
  local label=$1 tree=$2 r=$RUN/root-$1
  mkdir -p "$r"/{usr,var/lib,tmp,proc,sys,dev,run,boot}
  for l in bin sbin lib lib64; do ln -s "usr/$l" "$r/$l"; done
  cp -a /etc "$r/etc"
  cp -a "$tree" "$RUN/src-$label"
  if [ ! -e "$RUN/src-$label/bin/sh" ]; then
    mkdir -p "$RUN/src-$label/bin" "$RUN/src-$label/lib64" "$RUN/src-$label/lib/x86_64-linux-gnu"
    cp /usr/bin/dash "$RUN/src-$label/bin/sh"
    cp -n /usr/lib/x86_64-linux-gnu/libc.so.6 "$RUN/src-$label/lib/x86_64-linux-gnu/" || true
    cp -n /usr/lib64/ld-linux-x86-64.so.2 "$RUN/src-$label/lib64/" || true
  fi
  "$BOOTCTL" --root "$r" commit --consume --summary base "$RUN/src-$label" >/dev/null
  echo "$r"
}

# row LABEL TREE: entries, run (whole, and its commit), copy+commit, ratio.
row() {
  local label=$1 r runs=() commits=() copies=() i out entries
  r=$(root "$label" "$2")
  entries=$("$BOOTCTL" --root "$r" --json show 1 | sed -n 's/.*"entries": \([0-9]*\).*/\1/p')
  for i in 1 2 3; do
    sync
    local t0 t1
    t0=$(now)
    out=$("$BOOTCTL" --root "$r" run --from 1 --no-default -- sh -c "echo $i > /usr/share/bench-run-$i" 2>&1) ||
      { echo "bench-run: run failed: $out" >&2; exit 1; }
    t1=$(now)
    runs+=("$(echo "$t0 $t1" | awk '{printf "%.3f", $2-$1}')")
    commits+=("$(echo "$out" | sed -n 's/.*total \([0-9]*\) ms.*/\1/p' | awk '{printf "%.3f", $1/1000}')")
    copies+=("$(t sh -c "rm -rf '$RUN/copy' && cp -a '$r/.txboot/trees/1/usr' '$RUN/copy' && chmod -R u+w '$RUN/copy' &&
      echo c$i > '$RUN/copy/share/bench-copy-$i' && '$BOOTCTL' --root '$r' commit --no-default '$RUN/copy'")")
  done
  local rm cm pm
  rm=$(med "${runs[@]}"); cm=$(med "${commits[@]}"); pm=$(med "${copies[@]}")
  echo "| $label | $entries | $rm | $cm | $pm | $(ratio "$rm" "$pm") |"
}

echo "| /usr | entries | bootctl run (one file) | of which its commit | cp -a + change + commit | run / copy |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
row minbase "$CACHE/minbase/usr"
row big "$CACHE/big/usr"
rm -rf "$RUN"
