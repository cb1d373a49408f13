#!/usr/bin/env bash
# debian-root.sh [SUITE]: print the path of a Debian root (debootstrap
# minbase with systemd and a kernel) of SUITE, trixie (Debian 13, the
# default) or bookworm (Debian 12), building it once into a cache outside
# the clone keyed by its inputs. A fresh machine builds it from nothing;
# later runs on the same machine reuse it. Beside the root (DIR/root) it
# keeps the .debs of EXTRA_DEBS (DIR/debs/), which the tests unpack into
# updates; they are fetched through a private apt configuration for SUITE
# (scripts/debian-apt.sh), so the host's apt sources are never changed.
#   TXBOOT_DEBIAN_CACHE   cache dir (default /var/cache/txboot/debian)
#   TXBOOT_DEBIAN_MIRROR  mirror (default: the first URI apt is configured with)
set -euo pipefail

die() {
	echo "debian-root: $*" >&2
	exit 1
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
suite=${1:-trixie}
variant=minbase
case $suite in
bookworm) include=systemd-sysv,udev,linux-image-cloud-amd64,systemd-boot-efi,dbus ;;
# Debian 13 splits systemd-boot: bootctl is in systemd-boot-tools and
# systemd-bless-boot (and its generator) in systemd-boot, which the
# scenarios check against txboot's entries. libcap2-bin, attr and acl: the
# guest reads file capabilities, xattrs and ACLs back (getcap, getfattr,
# getfacl).
trixie) include=systemd-sysv,udev,linux-image-cloud-amd64,systemd-boot-efi,dbus,systemd-boot,libcap2-bin,attr,acl ;;
*) die "unknown suite $suite (trixie or bookworm)" ;;
esac
extra_debs=(hello)
cache=${TXBOOT_DEBIAN_CACHE:-/var/cache/txboot/debian}
mirror=$(bash "$here/debian-apt.sh" mirror) || die "no mirror"

key=$(printf '%s\n' "$suite" "$variant" "$include" "$mirror" "${extra_debs[@]}" | sha256sum | cut -c1-16)
dest=$cache/$suite-$key
if [[ -f $dest/.txboot-complete ]]; then
	echo "$dest/root"
	exit 0
fi

((EUID == 0)) || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap not installed (scripts/install-deps.sh)"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [[ -f $dest/.txboot-complete ]]; then
	echo "$dest/root"
	exit 0
fi
rm -rf "$dest"
mkdir -p "$dest"
echo "debian-root: debootstrap --variant=$variant --include=$include $suite ($mirror), once per machine" >&2
start=$SECONDS
debootstrap --variant="$variant" --include="$include" "$suite" "$dest/root" "$mirror" >"$dest/debootstrap.log" 2>&1 ||
	die "debootstrap failed; see $dest/debootstrap.log"
# Downloaded .debs are not part of the OS.
rm -rf "$dest/root/var/cache/apt/archives/"*.deb
mkdir -p "$dest/debs"
(cd "$dest/debs" && bash "$here/debian-apt.sh" "$suite" apt-get download -qq "${extra_debs[@]}") ||
	die "apt-get download ${extra_debs[*]} ($suite) failed"
printf '%s\n' "suite=$suite" "variant=$variant" "include=$include" "mirror=$mirror" "debs=${extra_debs[*]}" "seconds=$((SECONDS - start))" >"$dest/.txboot-complete"
echo "debian-root: built in $((SECONDS - start)) s" >&2
echo "$dest/root"
