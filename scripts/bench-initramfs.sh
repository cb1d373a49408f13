#!/usr/bin/env bash
# Initramfs size and build time: txboot's mkinitramfs vs Debian's
# initramfs-tools (/usr/sbin/mkinitramfs, MODULES=most as shipped), same
# kernels, one run, same machine. Debian's tool reads modules from
# /lib/modules/<kver> and /boot/config-<kver>: this script links them in
# from the unpacked kernel packages for the run and removes only what it added.
set -euo pipefail
cd "$(dirname "$0")/.."
KDIR=${TXBOOT_KERNEL_DIR:-$PWD/.cache/kernels-trixie}
OUT=${OUT:-$PWD/.cache/bench/initramfs}
mkdir -p "$OUT"
[ -x /usr/sbin/mkinitramfs ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq initramfs-tools-core >/dev/null
added=()
cleanup() { for p in "${added[@]}"; do rm -rf "$p"; done; }
trap cleanup EXIT

ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

echo "| kernel | txboot mkinitramfs | size | Debian mkinitramfs (MODULES=most) | size | size ratio | time ratio |"
echo "|---|---|---|---|---|---|---|"
for pkg in "$KDIR"/linux-image-*/; do
  kver=$(ls "$pkg/lib/modules")
  if [ ! -e "/lib/modules/$kver" ]; then
    mkdir -p /lib/modules
    cp -al "$pkg/lib/modules/$kver" "/lib/modules/$kver"; added+=("/lib/modules/$kver")
    depmod -a "$kver"
  fi
  if [ ! -e "/boot/config-$kver" ]; then
    cp "$pkg/boot/config-$kver" "/boot/config-$kver"; added+=("/boot/config-$kver")
  fi
  times=()
  for i in 1 2 3 4 5; do
    t0=$(ms); bin/mkinitramfs -q --kver "$kver" --kmoddir "$pkg" --init bin/initagent --add-file /bin/busybox:/bin/busybox -o "$OUT/txboot-$kver.img"; t1=$(ms)
    times+=($((t1 - t0)))
  done
  ours=$(printf '%s\n' "${times[@]}" | median)
  ours_size=$(stat -c %s "$OUT/txboot-$kver.img")
  t0=$(ms); /usr/sbin/mkinitramfs -o "$OUT/debian-$kver.img" "$kver" 2>/dev/null; t1=$(ms)
  deb=$((t1 - t0))
  deb_size=$(stat -c %s "$OUT/debian-$kver.img")
  awk -v k="$kver" -v o="$ours" -v os="$ours_size" -v d="$deb" -v ds="$deb_size" 'BEGIN{
    printf "| %s | %d ms | %.1f MiB | %d ms | %.1f MiB | %.2f× | %.3f× |\n", k, o, os/1048576, d, ds/1048576, os/ds, o/d }'
done
# Reproducibility: the same inputs twice give the same bytes.
kver=$(ls "$(ls -d "$KDIR"/linux-image-*/ | head -1)/lib/modules")
pkg=$(ls -d "$KDIR"/linux-image-*/ | head -1)
bin/mkinitramfs -q --kver "$kver" --kmoddir "$pkg" --init bin/initagent -o "$OUT/r1.img"
bin/mkinitramfs -q --kver "$kver" --kmoddir "$pkg" --init bin/initagent -o "$OUT/r2.img"
cmp "$OUT/r1.img" "$OUT/r2.img" && echo "reproducible: two builds are byte-identical ($(sha256sum < "$OUT/r1.img" | cut -c1-16))"
