#!/usr/bin/env bash
# debian-apt.sh SUITE apt-get|apt-cache ARGS...: run apt against a private
# configuration for Debian SUITE, never the host's sources: its own sources
# list, package lists, cache and (empty) dpkg status under
# $TXBOOT_APT_DIR (default /var/cache/txboot/apt-SUITE). The host (Debian
# 12) keeps its own apt sources untouched; the lists are fetched once
# (`update`) and again only when a command fails on stale lists, or with
# DEBIAN_APT_REFRESH=1.
#   debian-apt.sh mirror           print the mirror (the host's apt mirror)
#   TXBOOT_DEBIAN_MIRROR           mirror (default: the first URI the host's
#                                  apt is configured with)
# Signed by the host's /usr/share/keyrings/debian-archive-keyring.gpg.
set -euo pipefail

die() {
	echo "debian-apt: $*" >&2
	exit 1
}

mirror=${TXBOOT_DEBIAN_MIRROR:-}
if [[ -z $mirror ]]; then
	mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list 2>/dev/null |
		grep -v security | awk '$1 == "URIs:" { print $2; exit } $1 == "deb" { print $2; exit }' || true)
fi
[[ -n $mirror ]] || die "no Debian mirror configured in apt; set TXBOOT_DEBIAN_MIRROR"

(($# >= 1)) || die "usage: $0 SUITE apt-get|apt-cache ARGS... | $0 mirror"
if [[ $1 == mirror ]]; then
	echo "$mirror"
	exit 0
fi
(($# >= 2)) || die "usage: $0 SUITE apt-get|apt-cache ARGS..."
suite=$1
tool=$2
shift 2
case $tool in
apt-get | apt-cache) ;;
*) die "unknown tool $tool (apt-get or apt-cache)" ;;
esac
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -f $keyring ]] || die "$keyring missing (package debian-archive-keyring)"

dir=${TXBOOT_APT_DIR:-/var/cache/txboot/apt-$suite}
mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/sources.list.d" "$dir/preferences.d" ||
	die "cannot create $dir"
src="deb [signed-by=$keyring] $mirror $suite main"
if [[ ! -f $dir/sources.list ]] || [[ $(cat "$dir/sources.list") != "$src" ]]; then
	echo "$src" >"$dir/sources.list"
	rm -f "$dir/lists/"*_Packages* "$dir/lists/"*Release*
fi
[[ -f $dir/status ]] || : >"$dir/status"

opts=(
	-o "Dir::Etc::SourceList=$dir/sources.list"
	-o "Dir::Etc::SourceParts=$dir/sources.list.d"
	-o "Dir::Etc::Preferences=$dir/preferences"
	-o "Dir::Etc::PreferencesParts=$dir/preferences.d"
	-o "Dir::State::Lists=$dir/lists"
	-o "Dir::Cache=$dir/cache"
	-o "Dir::State::status=$dir/status"
	-o "APT::Get::List-Cleanup=true"
)
# As root, apt's _apt sandbox user could not write into the caller's
# directory (apt-get download) or this one.
((EUID == 0)) && opts+=(-o APT::Sandbox::User=root)

# Serialize updates of the same private lists (parallel make targets).
exec 9>"$dir/.lock"
flock 9 || die "cannot lock $dir/.lock"

update() {
	echo "debian-apt: apt-get update ($suite from $mirror, private lists in $dir)" >&2
	apt-get -qq "${opts[@]}" update || die "apt-get update ($suite) failed"
}
if [[ ${DEBIAN_APT_REFRESH:-0} == 1 ]] || ! compgen -G "$dir/lists/*_Packages*" >/dev/null; then
	update
fi
if "$tool" "${opts[@]}" "$@"; then
	exit 0
fi
# Stale lists name versions the mirror no longer has: refresh once, retry.
update
exec "$tool" "${opts[@]}" "$@"
