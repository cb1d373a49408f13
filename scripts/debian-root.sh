#!/usr/bin/env bash
# debian-root.sh: print the path of a Debian 12 root (debootstrap minbase
# with systemd and a kernel), building it once into a cache outside the
# clone keyed by its inputs. A fresh machine builds it from nothing; later
# runs on the same machine reuse it. Beside the root (DIR/root) it keeps
# the .debs of EXTRA_DEBS (DIR/debs/), which the tests unpack into updates.
#   TXBOOT_DEBIAN_CACHE   cache dir (default /var/cache/txboot/debian)
#   TXBOOT_DEBIAN_MIRROR  mirror (default: the first URI apt is configured with)
set -euo pipefail

die() {
	echo "debian-root: $*" >&2
	exit 1
}

suite=bookworm
variant=minbase
include=systemd-sysv,udev,linux-image-cloud-amd64,systemd-boot-efi,dbus
extra_debs=(hello)
cache=${TXBOOT_DEBIAN_CACHE:-/var/cache/txboot/debian}
mirror=${TXBOOT_DEBIAN_MIRROR:-}
if [[ -z $mirror ]]; then
	mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list 2>/dev/null |
		grep -v security | awk '$1 == "URIs:" { print $2; exit } $1 == "deb" { print $2; exit }' || true)
fi
[[ -n $mirror ]] || die "no Debian mirror configured in apt; set TXBOOT_DEBIAN_MIRROR"

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
apt_opts=(-qq -o APT::Sandbox::User=root)
if ! (cd "$dest/debs" && apt-get download "${apt_opts[@]}" "${extra_debs[@]}" >/dev/null 2>&1); then
	apt-get update -qq || die "apt-get update failed"
	(cd "$dest/debs" && apt-get download "${apt_opts[@]}" "${extra_debs[@]}") || die "apt-get download ${extra_debs[*]} failed"
fi
printf '%s\n' "suite=$suite" "variant=$variant" "include=$include" "mirror=$mirror" "debs=${extra_debs[*]}" "seconds=$((SECONDS - start))" >"$dest/.txboot-complete"
echo "debian-root: built in $((SECONDS - start)) s" >&2
echo "$dest/root"
