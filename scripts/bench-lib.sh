# bench-lib.sh: sourced by scripts/bench.sh and scripts/bench-repo.sh (set
# CACHE and RUN first). Installs the reference tools when missing, builds
# bin/bootctl, caches the two benchmark trees in $CACHE and defines the
# timing helpers t, ratio, med and warm.
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
# t CMD...: run CMD after a sync, print its wall time in seconds (3
# decimals below 1 s, where 10 ms is a large share of the ratio).
t() {
  sync
  local t0 t1
  t0=$(now)
  "$@" >/dev/null 2>"$RUN/err" || { echo "bench: $* failed:" >&2; cat "$RUN/err" >&2; exit 1; }
  t1=$(now)
  echo "$t0 $t1" | awk '{d=$2-$1; printf (d < 1 ? "%.3f" : "%.2f"), d}'
}
ratio() { echo "$1 $2" | awk '{ if ($2 > 0) printf "%.2f×", $1/$2; else print "-" }'; }
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
warm() { find "$1" -type f -print0 | xargs -0 -P2 -n 256 cat >/dev/null; }
