package install

// The ext4 verity feature: fs-verity (which sealed txs need) works on ext4
// only when the filesystem has it. install turns it on for the target's
// filesystem when it can, else says what to run.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// Runner runs a command and returns its combined output (tune2fs; a fake
// in tests).
type Runner func(name string, args ...string) ([]byte, error)

// ExecRunner runs the command for real.
func ExecRunner(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

// Feature states of the ext4 verity feature.
const (
	featureUnknown = iota // not ext4, or the superblock could not be read
	featureOff
	featureOn
)

// ext4 superblock: at byte 1024; s_magic at 0x38, s_feature_ro_compat at
// 0x64, RO_COMPAT_VERITY 0x8000.
const (
	sbOffset       = 1024
	sbMagicOff     = 0x38
	sbROCompatOff  = 0x64
	ext4Magic      = 0xEF53
	roCompatVerity = 0x8000
)

// ErrNotExt4: the device has no ext2/3/4 superblock.
var ErrNotExt4 = errors.New("no ext4 superblock")

// ext4Verity reads dev's superblock: featureOn or featureOff.
func ext4Verity(dev string) (int, error) {
	f, err := os.Open(dev)
	if err != nil {
		return featureUnknown, err
	}
	defer f.Close()
	sb := make([]byte, sbROCompatOff+4)
	if _, err := f.ReadAt(sb, sbOffset); err != nil {
		if errors.Is(err, io.EOF) {
			return featureUnknown, fmt.Errorf("%s: %w", dev, ErrNotExt4)
		}
		return featureUnknown, fmt.Errorf("read the superblock of %s: %w", dev, err)
	}
	if binary.LittleEndian.Uint16(sb[sbMagicOff:]) != ext4Magic {
		return featureUnknown, fmt.Errorf("%s: %w", dev, ErrNotExt4)
	}
	if binary.LittleEndian.Uint32(sb[sbROCompatOff:])&roCompatVerity != 0 {
		return featureOn, nil
	}
	return featureOff, nil
}

// verityFS is the filesystem a path is on and the state of its verity
// feature.
type verityFS struct {
	m       mount
	found   bool
	feature int
}

func (v verityFS) device() string {
	if v.found && strings.HasPrefix(v.m.source, "/") {
		return v.m.source
	}
	return "DEVICE"
}

// tuneCmd is the command that turns the feature on.
func (v verityFS) tuneCmd() string { return "tune2fs -O verity " + v.device() }

const verityNeeds = "ext4, Linux 5.4+ with CONFIG_FS_VERITY"

// lookupVerity: the filesystem mounted at root and its feature.
func lookupVerity(mountinfo, root string) (verityFS, error) {
	var v verityFS
	var err error
	v.m, v.found, err = mountAt(mountinfo, root)
	if err != nil || !v.found || v.m.fstype != "ext4" || !strings.HasPrefix(v.m.source, "/") {
		return v, err
	}
	v.feature, _ = ext4Verity(v.m.source) // unreadable: unknown, tune2fs will say
	return v, nil
}

// enableVerity turns the ext4 verity feature on for the filesystem mounted
// at root, when root is the mount point of a whole ext4 filesystem without
// it (install only works on a target, never on the running /; a plain
// directory's filesystem is the host's, which is left alone). Anything
// else is a line in the log saying what to run: sealing is optional.
func enableVerity(mountinfo, root string, run Runner, log io.Writer) {
	v, err := lookupVerity(mountinfo, root)
	say := func(format string, a ...any) { fmt.Fprintf(log, "install: fs-verity: "+format+"\n", a...) }
	switch {
	case err != nil:
		say("cannot tell %s's filesystem (%v); for sealed txs run tune2fs -O verity on it (%s)", root, err, verityNeeds)
	case !v.found || !v.m.whole():
		say("%s is not the mount point of a filesystem: for sealed txs, make the target's ext4 with -O verity (mkfs.ext4 -O verity) or run tune2fs -O verity on it; its txs boot unsealed until then", root)
	case v.m.fstype != "ext4":
		say("%s is %s; txboot seals txs only on ext4 with the verity feature, so they boot unsealed", root, v.m.fstype)
	case v.feature == featureOn:
		say("the ext4 verity feature is on for %s", v.device())
	default:
		tuneVerity(v, run, say)
	}
}

func tuneVerity(v verityFS, run Runner, say func(string, ...any)) {
	out, err := run("tune2fs", "-O", "verity", v.device())
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if msg == "" {
			msg = err.Error()
		}
		say("%s failed (%s); run it by hand for sealed txs (%s): they boot unsealed until then", v.tuneCmd(), oneLine(msg), verityNeeds)
		return
	}
	say("turned on the ext4 verity feature of %s (%s): txs are sealed once the kernel has fs-verity (txboot-seal.service at boot)", v.device(), v.tuneCmd())
}

// oneLine joins a command's output lines for a log line, without
// tune2fs's version banner ("tune2fs 1.47.0 (5-Feb-2023)").
func oneLine(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if rest, ok := strings.CutPrefix(l, "tune2fs "); ok && rest != "" && rest[0] >= '0' && rest[0] <= '9' {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(strings.Fields(strings.Join(keep, "\n")), " ")
}
