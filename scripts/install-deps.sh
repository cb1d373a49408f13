#!/usr/bin/env bash
# install-deps.sh: install the Debian packages txboot's build and QEMU tests
# need. Idempotent; a fast no-op when everything is already installed.
# Run as root (make test / make demo do it on a fresh Debian 12 machine).
set -euo pipefail

PKGS=(
	qemu-system-x86 ovmf systemd-boot-efi mtools dosfstools fdisk
	busybox-static zstd cpio e2fsprogs kmod ostree debootstrap
	initramfs-tools-core systemd-boot openssl nginx-light time
	debian-archive-keyring fsverity erofs-utils
)

missing=()
for p in "${PKGS[@]}"; do
	# dpkg-query exits 0 for removed-but-configured packages too, so the
	# status string must say "install ok installed".
	st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	if [[ $st != "install ok installed" ]]; then
		missing+=("$p")
	fi
done

if ((${#missing[@]} == 0)); then
	exit 0
fi

if ((EUID != 0)); then
	echo "install-deps: missing packages: ${missing[*]}; run as root to install them" >&2
	exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
