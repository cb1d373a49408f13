// Package harness is the support library for txboot's QEMU scenario tests:
// it finds the Debian kernels fetched by scripts/fetch-kernels.sh, builds
// disk images without root privileges (ext4 via mkfs.ext4 -d, GPT disks
// with an ESP via sfdisk + mtools), reads and damages them afterwards
// (mtools for FAT, debugfs and direct block writes for ext4), and runs QEMU
// under TCG with the serial console captured for regexp assertions.
//
// Every external tool is run with a clean, explicit argument list; errors
// carry the command and its stderr.
package harness
