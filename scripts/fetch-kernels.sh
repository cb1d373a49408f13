#!/usr/bin/env bash
# fetch-kernels.sh DEST: download Debian's cloud and generic amd64 kernels
# of FETCH_KERNELS_SUITE (default trixie, Debian 13; bookworm for Debian 12)
# for the QEMU tests and unpack them WITHOUT installing them:
#   DEST/debs/*.deb                          the downloaded packages
#   DEST/linux-image-<kver>/boot/vmlinuz-*   the kernel
#   DEST/linux-image-<kver>/lib/modules/<kver>/
#   DEST/kernels.stamp                       "meta package kver vmlinuz" lines
# Idempotent: with a valid DEST/kernels.stamp it touches neither apt nor the
# network. FETCH_KERNELS_REFRESH=1 re-resolves the metapackages (newer ABI).
# apt runs with a private configuration for the suite (scripts/debian-apt.sh):
# the host's apt sources are never used or changed. Use one DEST per suite.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
suite=${FETCH_KERNELS_SUITE:-trixie}
dapt() { bash "$here/debian-apt.sh" "$suite" "$@"; }

die() {
	echo "fetch-kernels: $*" >&2
	exit 1
}

(($# == 1)) || die "usage: $0 DEST"
mkdir -p "$1/debs" || die "cannot create $1/debs"
dest=$(cd "$1" && pwd)
stamp=$dest/kernels.stamp

# Serialize concurrent runs (parallel make targets) on the same DEST.
exec 9>"$dest/.lock"
flock 9 || die "cannot lock $dest/.lock"

METAS=(linux-image-cloud-amd64 linux-image-amd64)

# One suite per DEST (the tests take the first cloud and generic kernel
# they find there). A DEST from before this file existed holds bookworm's.
have=bookworm
[[ -f $dest/suite ]] && have=$(cat "$dest/suite")
if compgen -G "$dest/linux-image-*" >/dev/null && [[ $have != "$suite" ]]; then
	die "$dest holds $have kernels, not $suite; use another DEST"
fi
echo "$suite" >"$dest/suite"

# Fast path: everything the stamp names is still there.
if [[ -f $stamp && ${FETCH_KERNELS_REFRESH:-0} != 1 ]]; then
	ok=1
	n=0
	while read -r meta pkg kver vmlinuz; do
		n=$((n + 1))
		if [[ ! -f $vmlinuz || ! -d $dest/$pkg/lib/modules/$kver ]]; then
			ok=0
		fi
	done <"$stamp"
	if ((ok && n == ${#METAS[@]})); then
		while read -r meta pkg kver vmlinuz; do
			echo "$meta -> $pkg kver=$kver vmlinuz=$vmlinuz"
		done <"$stamp"
		exit 0
	fi
fi

apt_opts=(-qq)

# resolve META: print the versioned package the metapackage depends on.
resolve() {
	dapt apt-cache depends "$1" 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

# Without package lists apt-cache knows nothing; refresh once, lazily.
updated=0
refresh() {
	if ((updated == 0)); then
		updated=1
		echo "fetch-kernels: apt-get update ($suite)"
		DEBIAN_APT_REFRESH=1 dapt apt-get -qq check >/dev/null ||
			die "apt-get update failed (are Debian's package lists reachable?)"
	fi
}

lines=()
for meta in "${METAS[@]}"; do
	pkg=$(resolve "$meta" || true)
	if [[ -z $pkg ]]; then
		refresh
		pkg=$(resolve "$meta" || true)
	fi
	[[ -n $pkg ]] || die "cannot resolve $meta to a versioned linux-image package (apt-cache depends $meta)"

	root=$dest/$pkg
	unpacked=$root/.txboot-unpacked
	if [[ ! -f $unpacked ]]; then
		if ! compgen -G "$dest/debs/${pkg}_*.deb" >/dev/null; then
			echo "fetch-kernels: downloading $pkg"
			# Stale package lists name versions the mirror no longer has.
			if ! (cd "$dest/debs" && dapt apt-get download "${apt_opts[@]}" "$pkg"); then
				refresh
				(cd "$dest/debs" && dapt apt-get download "${apt_opts[@]}" "$pkg") ||
					die "apt-get download $pkg failed"
			fi
		fi
		deb=$(printf '%s\n' "$dest/debs/${pkg}_"*.deb | sort -V | tail -n 1)
		# Unpack afresh so an interrupted earlier run leaves nothing half done.
		rm -rf "$root"
		echo "fetch-kernels: unpacking ${deb##*/}"
		dpkg -x "$deb" "$root" || die "dpkg -x $deb failed"
		compgen -G "$root/boot/vmlinuz-*" >/dev/null || die "$deb has no boot/vmlinuz-*"
		echo "${deb##*/}" >"$unpacked"
	fi
	# Debian 13's packages ship their modules in usr/lib/modules (merged
	# /usr); the tests look in lib/modules.
	if [[ ! -e $root/lib && -d $root/usr/lib/modules ]]; then
		ln -s usr/lib "$root/lib"
	fi

	vmlinuz=$(printf '%s\n' "$root"/boot/vmlinuz-* | sed -n 1p)
	kver=${vmlinuz##*/vmlinuz-}
	[[ -d $root/lib/modules/$kver ]] || die "$root/lib/modules/$kver missing (delete $root and rerun)"
	lines+=("$meta $pkg $kver $vmlinuz")
	echo "$meta -> $pkg kver=$kver vmlinuz=$vmlinuz"
done

printf '%s\n' "${lines[@]}" >"$stamp.tmp"
mv "$stamp.tmp" "$stamp"
