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
# TREES=minbase for a quick run (3 minutes instead of 23).
TREES=${TREES:-minbase big}
CACHE=$PWD/.cache/bench
RUN=$CACHE/repo-run
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

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
for tree in $TREES; do
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
# Both repositories are served by one Debian nginx on 127.0.0.1 (started
# here on a free port, stopped by the EXIT trap) and pulled into fresh
# clients on the same disk. Build side, not timed: tx 1 is the tree,
# committed and published signed (`bootctl publish --key`, version v1),
# and `ostree commit` on branch b of an archive repo (`ostree summary -u`
# after each commit, as an ostree publisher does). tx 2 is the same tree
# with 1% of its regular files (every 100th in sorted order) given new
# content (a line appended), committed and published as v2, and committed
# on branch b again. No ostree static deltas: both sides fetch objects.
# Like with like: `ostree pull` stores verified objects and the commit
# durably and checks nothing out (that is `ostree checkout`/deploy), so
# its equivalent is `bootctl pull --download-only` (verified objects and
# the manifest in the CAS, durable, a download record; no tree, no tx
# record). Those are the target rows. The full `bootctl pull` (download,
# then the tree built and the tx recorded) is reported too, next to
# ostree pull + `ostree checkout` of the commit, without a target.
# Timed, into fresh clients each run:
# (1) empty-store download: `bootctl --root S pull URL --trust K.pem
#     --tx v1 --download-only` vs `ostree pull origin b@C1` into an empty
#     bare repo (`ostree init --mode=bare` and `remote add`, not timed);
# (2) update download into that same client: `bootctl --root S pull URL
#     --trust K.pem --download-only` (latest: v2; its parent v1 is the
#     pending download, so the manifest comes as a delta) vs `ostree pull
#     origin b`;
# (3) `bootctl --root S pull --apply` of v2 (tree + record, no network)
#     vs `ostree checkout` of C2 (hardlinks from the bare repo);
# (4) and (5) the full pulls, empty store and update, into a second
#     client F: `bootctl --root F pull URL --trust K.pem [--tx v1]`, shown
#     against ostree pull + ostree checkout (the sums of the times above).
# Bytes: the sum of nginx's $body_bytes_sent over the requests logged
# during that command (MB = 10^6 bytes). Warm runs: the served
# repositories are in the page cache (just written, caches not dropped);
# each client pays for its own writes (txboot's syncfs, ostree's fsyncs).
# Medians of 3 runs (big: each run's clients are removed before the
# next, then a 61 s wait). Nothing is removed during a timed run, and
# each starts at least 61 s after the last removal (and a sync): ext4
# without a journal (this VM's disk) skips inodes freed in the last 60 s
# when it allocates one, at a cost per skipped inode (~0.25 ms per file created after mass removals, measured),
# which would slow whichever tool ran first after a removal.
NGX=$(mktemp -d /tmp/bench-nginx.XXXXXX)
NGXPID=
stop_nginx() {
  if [ -n "$NGXPID" ]; then
    kill -- -"$NGXPID" 2>/dev/null || true
    wait "$NGXPID" 2>/dev/null || true
  fi
  rm -rf "$NGX" "$RUN"
}
trap stop_nginx EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
cat >"$NGX/nginx.conf" <<CONF
$([ "$(id -u)" = 0 ] && echo "user root root;")
worker_processes 1;
pid $NGX/nginx.pid;
error_log $NGX/error.log;
events { worker_connections 256; }
http {
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 100000;
  client_body_temp_path $NGX/body;
  proxy_temp_path $NGX/proxy;
  fastcgi_temp_path $NGX/fastcgi;
  uwsgi_temp_path $NGX/uwsgi;
  scgi_temp_path $NGX/scgi;
  log_format bench '\$body_bytes_sent \$status \$request_uri';
  server {
    listen 127.0.0.1:$PORT;
    root $RUN/www;
    access_log $NGX/access.log bench;
  }
}
CONF
: >"$NGX/access.log"
# setsid: nginx's master leads its own process group, so the trap kills
# the master and its worker together.
setsid /usr/sbin/nginx -e "$NGX/error.log" -c "$NGX/nginx.conf" -p "$NGX" -g 'daemon off;' >"$NGX/stdout" 2>&1 &
NGXPID=$!
for _ in $(seq 50); do
  curl -s -o /dev/null "$URL/" && break
  sleep 0.1
done
curl -s -o /dev/null "$URL/" || { echo "bench: nginx did not start:" >&2; cat "$NGX/stdout" "$NGX/error.log" >&2; exit 1; }
logmark() { wc -l <"$NGX/access.log"; }
# mb MARK: MB sent since MARK (nginx logs a request once its last byte is
# written, before the client has read it; the pause covers the rest).
mb() { sleep 0.2; tail -n +"$(( $1 + 1 ))" "$NGX/access.log" | awk '{s+=$1} END{printf "%.1f", s/1e6}'; }

for tree in $TREES; do
  src=$CACHE/$tree/usr
  entries=$(find "$src" | wc -l)
  size=$(du -sh "$src" | cut -f1)
  reps=3
  rm -rf "$RUN"; sync; removed=$(date +%s)
  mkdir -p "$RUN/www"
  warm "$src"
  OSRV=$RUN/www/ostree-repo
  "$BOOTCTL" keygen --out "$RUN/k" >/dev/null
  "$BOOTCTL" --root "$RUN/sys" commit "$src" --summary v1 >/dev/null
  "$BOOTCTL" --root "$RUN/sys" publish --repo "$RUN/www/txboot-repo" --key "$RUN/k.key" --version v1 >/dev/null
  ostree init --mode=archive --repo="$OSRV"
  c1=$(ostree commit --repo="$OSRV" --branch=b --tree=dir="$src" --no-xattrs)
  ostree summary -u --repo="$OSRV"
  # tx 2: a hardlinked copy with 1% of the files replaced (cp -p keeps
  # mode, owner and times; mv breaks the link, so $src is never changed).
  cp -al "$src" "$RUN/tree2"
  (cd "$RUN/tree2" && find . -type f -print0 | sort -z | awk -v RS='\0' -v ORS='\0' 'NR % 100 == 0') >"$RUN/changed"
  while IFS= read -r -d '' f; do
    cp -p "$RUN/tree2/$f" "$RUN/new"
    echo "bench: tx 2 of $f" >>"$RUN/new"
    mv -f "$RUN/new" "$RUN/tree2/$f"
  done <"$RUN/changed"
  nchanged=$(tr -cd '\0' <"$RUN/changed" | wc -c)
  mchanged=$(cd "$RUN/tree2" && xargs -0 stat -c %s <"$RUN/changed" | awk '{s+=$1} END{printf "%.1f", s/1e6}')
  warm "$RUN/tree2"
  "$BOOTCTL" --root "$RUN/sys" commit "$RUN/tree2" --summary v2 >/dev/null
  "$BOOTCTL" --root "$RUN/sys" publish --repo "$RUN/www/txboot-repo" --key "$RUN/k.key" --version v2 >/dev/null
  ostree commit --repo="$OSRV" --branch=b --tree=dir="$RUN/tree2" --no-xattrs >/dev/null
  ostree summary -u --repo="$OSRV"
  sync
  wait=$(( removed + 61 - $(date +%s) ))
  [ "$wait" -gt 0 ] && sleep "$wait"
  c2=$(ostree rev-parse --repo="$OSRV" b)
  e1=(); e2=(); eb1=(); eb2=(); u1=(); u2=(); ub1=(); ub2=(); a1=(); a2=(); f1=(); f2=(); fe=(); fu=()
  for r in $(seq $reps); do
    if [ "$tree" = big ] && [ "$r" -gt 1 ]; then
      # Three big clients do not fit next to each other on every disk:
      # the last run's go, then the wait for ext4's recently-freed inodes.
      p=$(( r - 1 ))
      rm -rf "$RUN/c$p" "$RUN/oc$p" "$RUN/co$p" "$RUN/f$p"
      sync; sleep 61
    fi
    ostree init --mode=bare --repo="$RUN/oc$r"
    ostree remote add --repo="$RUN/oc$r" --no-gpg-verify origin "$URL/ostree-repo"
    m=$(logmark); e1+=("$(t "$BOOTCTL" --root "$RUN/c$r" pull "$URL/txboot-repo" --trust "$RUN/k.pem" --tx v1 --download-only)"); eb1+=("$(mb "$m")")
    m=$(logmark); e2+=("$(t ostree pull --repo="$RUN/oc$r" origin "b@$c1")"); eb2+=("$(mb "$m")")
    m=$(logmark); u1+=("$(t "$BOOTCTL" --root "$RUN/c$r" pull "$URL/txboot-repo" --trust "$RUN/k.pem" --download-only)"); ub1+=("$(mb "$m")")
    m=$(logmark); u2+=("$(t ostree pull --repo="$RUN/oc$r" origin b)"); ub2+=("$(mb "$m")")
    a1+=("$(t "$BOOTCTL" --root "$RUN/c$r" pull --apply --tx v2)")
    a2+=("$(t ostree checkout --repo="$RUN/oc$r" "$c2" "$RUN/co$r")")
    fe+=("$(t "$BOOTCTL" --root "$RUN/f$r" pull "$URL/txboot-repo" --trust "$RUN/k.pem" --tx v1)")
    fu+=("$(t "$BOOTCTL" --root "$RUN/f$r" pull "$URL/txboot-repo" --trust "$RUN/k.pem")")
  done
  L="| $tree | $entries / $size"
  ours=$(med "${e1[@]}"); theirs=$(med "${e2[@]}"); oe=$theirs
  echo "$L | **download** tx 1 into an empty store (\`pull --download-only\`) | $ours | ostree pull into an empty bare repo | $theirs | $(ratio "$ours" "$theirs") | ≤ 0.5× |"
  ours=$(med "${eb1[@]}"); theirs=$(med "${eb2[@]}")
  echo "$L | download tx 1: MB transferred (not s) | $ours | ostree pull | $theirs | $(ratio "$ours" "$theirs") | |"
  ours=$(med "${u1[@]}"); theirs=$(med "${u2[@]}"); ou=$theirs
  echo "$L | **update download** tx 1 → tx 2 ($nchanged files, $mchanged MB changed; manifest delta) | $ours | ostree pull of the new commit | $theirs | $(ratio "$ours" "$theirs") | ≤ 0.5× |"
  ours=$(med "${ub1[@]}"); theirs=$(med "${ub2[@]}")
  echo "$L | update download: MB transferred (not s) | $ours | ostree pull | $theirs | $(ratio "$ours" "$theirs") | ≤ 1.0× |"
  ours=$(med "${a1[@]}"); theirs=$(med "${a2[@]}"); oc=$theirs
  echo "$L | \`pull --apply\` of tx 2 (tree + record, no network) | $ours | ostree checkout of the commit | $theirs | $(ratio "$ours" "$theirs") | |"
  ours=$(med "${fe[@]}"); theirs=$(echo "$oe $oc" | awk '{printf "%.2f", $1+$2}')
  echo "$L | full pull tx 1 into an empty store (download + tree + record) | $ours | ostree pull + checkout | $theirs | $(ratio "$ours" "$theirs") | |"
  ours=$(med "${fu[@]}"); theirs=$(echo "$ou $oc" | awk '{printf "%.2f", $1+$2}')
  echo "$L | full update pull tx 1 → tx 2 | $ours | ostree pull + checkout | $theirs | $(ratio "$ours" "$theirs") | |"  # Peak memory (max RSS, /usr/bin/time) of a full pull into an empty
  # store, against the tx's manifest size (pull runs under a soft limit of
  # 64 MiB plus 6 × the manifest size, repo.MemoryBudget).
  rm -rf "$RUN/c$reps" "$RUN/oc$reps" "$RUN/co$reps"; sync
  [ "$tree" = big ] && sleep 61
  kb=$(/usr/bin/time -f %M "$BOOTCTL" --root "$RUN/mem" pull "$URL/txboot-repo" --trust "$RUN/k.pem" --tx v1 2>&1 >/dev/null | tail -1)
  mfs=$(awk '/"manifest": \{/ {m=1} m && /"size":/ {gsub(/[^0-9]/, ""); print; exit}' "$RUN/www/txboot-repo/index.json")
  echo "$L | peak RSS of the full pull tx 1 (MB; manifest $(awk -v b="$mfs" 'BEGIN{printf "%.1f", b/1e6}') MB) | $(awk -v k="$kb" 'BEGIN{printf "%.0f", k/1024}') | | | | ≤ 64 MiB + 6 × manifest (repo.MemoryBudget) |"
  rm -rf "$RUN/mem"
done
rm -rf "$RUN"

echo
echo "$(nproc) cores, $(uname -r), ostree $(ostree --version | awk '/Version/{print $2}' | tr -d "'"), $(date -u +%Y-%m-%d)"
