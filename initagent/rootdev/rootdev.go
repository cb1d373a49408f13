// Package rootdev finds the block device named by root= and waits for it.
//
// It scans sysfs (class/block) and reads superblocks and partition tables
// itself instead of using u-root's pkg/mount/block, because that package
// hard-codes /sys and /dev (untestable without a VM), has no LABEL= support,
// and pulls in github.com/rekby/gpt, which go.mod does not list.
package rootdev

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/txboot/txboot/initagent/cmdline"
)

// Sentinel errors, for errors.Is.
var (
	ErrNoSpec    = errors.New("no usable root= given")
	ErrNotFound  = errors.New("root device not found")
	ErrAmbiguous = errors.New("root= matches more than one device")
	ErrTimeout   = errors.New("timed out waiting for the root device")
)

// DefaultPoll is the interval between scans when Wait is given poll <= 0.
const DefaultPoll = 100 * time.Millisecond

// Device is one block device seen in sysfs.
type Device struct {
	Name      string // sysfs name, e.g. "vda1"
	Path      string // device node, e.g. "/dev/vda1"
	Parent    string // the disk's name, for partitions
	Partition int    // partition number, 0 for whole disks
	FS        FS     // zero if no filesystem was recognised
	PartUUID  string
	PartLabel string
	// Held is true when another device uses this one (RAID member, LVM
	// PV, …); such a device is never the root when an unheld one matches.
	Held bool
	Err  error // why probing failed, if it did
}

// String describes the device for people reading a boot log.
func (d Device) String() string {
	var b strings.Builder
	b.WriteString(d.Name)
	var attrs []string
	if d.FS.Type != "" {
		attrs = append(attrs, d.FS.Type)
	}
	for _, kv := range [][2]string{{"UUID", d.FS.UUID}, {"LABEL", d.FS.Label}, {"PARTUUID", d.PartUUID}, {"PARTLABEL", d.PartLabel}} {
		if kv[1] != "" {
			attrs = append(attrs, kv[0]+"="+strconv.Quote(kv[1]))
		}
	}
	if d.Held {
		attrs = append(attrs, "in use by another device")
	}
	if len(attrs) == 0 {
		attrs = append(attrs, "no filesystem recognised")
	}
	if d.Err != nil {
		attrs = append(attrs, "error: "+d.Err.Error())
	}
	fmt.Fprintf(&b, " (%s)", strings.Join(attrs, " "))
	return b.String()
}

// Resolver finds devices under configurable sysfs and /dev roots, so tests
// can use a fake tree whose "device nodes" are image files.
type Resolver struct {
	SysRoot string // default "/sys"
	DevRoot string // default "/dev"
}

var defaultResolver = &Resolver{}

// Resolve finds the device for spec with the real /sys and /dev.
func Resolve(spec cmdline.RootSpec) (string, error) { return defaultResolver.Resolve(spec) }

// Wait waits for the device for spec with the real /sys and /dev.
func Wait(ctx context.Context, spec cmdline.RootSpec, timeout, poll time.Duration) (string, error) {
	return defaultResolver.Wait(ctx, spec, timeout, poll)
}

func (r *Resolver) sysRoot() string {
	if r.SysRoot == "" {
		return "/sys"
	}
	return r.SysRoot
}

func (r *Resolver) devRoot() string {
	if r.DevRoot == "" {
		return "/dev"
	}
	return r.DevRoot
}

// Resolve returns the device node for spec, ErrNotFound if no device matches
// yet, or ErrAmbiguous if several do.
func (r *Resolver) Resolve(spec cmdline.RootSpec) (string, error) {
	switch spec.Kind {
	case cmdline.RootNone:
		return "", ErrNoSpec
	case cmdline.RootPath:
		rel, ok := strings.CutPrefix(spec.Value, "/dev/")
		if !ok || rel == "" {
			return "", fmt.Errorf("root=%s: %w", spec, ErrNoSpec)
		}
		p := filepath.Join(r.devRoot(), rel)
		if _, err := os.Stat(p); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return "", fmt.Errorf("root=%s: %w", spec, ErrNotFound)
			}
			return "", fmt.Errorf("root=%s: %w", spec, err)
		}
		return p, nil
	}
	devs, err := r.Devices()
	if err != nil {
		return "", err
	}
	var match []Device
	for _, d := range devs {
		if matches(d, spec) {
			match = append(match, d)
		}
	}
	if len(match) > 1 {
		var unheld []Device
		for _, d := range match {
			if !d.Held {
				unheld = append(unheld, d)
			}
		}
		if len(unheld) > 0 {
			match = unheld
		}
	}
	switch len(match) {
	case 0:
		return "", fmt.Errorf("root=%s: %w", spec, ErrNotFound)
	case 1:
		return match[0].Path, nil
	}
	return "", fmt.Errorf("root=%s: %w: %s", spec, ErrAmbiguous, describe(match))
}

func matches(d Device, spec cmdline.RootSpec) bool {
	switch spec.Kind {
	case cmdline.RootUUID:
		return d.FS.UUID != "" && strings.EqualFold(d.FS.UUID, spec.Value)
	case cmdline.RootLabel:
		return d.FS.Label != "" && d.FS.Label == spec.Value
	case cmdline.RootPartUUID:
		return d.PartUUID != "" && strings.EqualFold(d.PartUUID, spec.Value)
	case cmdline.RootPartLabel:
		return d.PartLabel != "" && d.PartLabel == spec.Value
	}
	return false
}

// Wait polls until the device for spec appears, the timeout passes or ctx
// ends. The timeout error names what it waited for and every block device
// it did see, so a person at the console can fix root=. Errors other than
// "not found yet" (bad spec, ambiguity) return at once: waiting won't help.
func (r *Resolver) Wait(ctx context.Context, spec cmdline.RootSpec, timeout, poll time.Duration) (string, error) {
	if poll <= 0 {
		poll = DefaultPoll
	}
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		p, err := r.Resolve(spec)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return "", err
		}
		select {
		case <-wctx.Done():
			devs, derr := r.Devices()
			seen := describe(devs)
			if derr != nil {
				seen += "; scan error: " + derr.Error()
			}
			if ctx.Err() != nil {
				return "", fmt.Errorf("waiting for root=%s: %w; block devices seen: %s", spec, ctx.Err(), seen)
			}
			return "", fmt.Errorf("%w: root=%s not found after %v; block devices seen: %s",
				ErrTimeout, spec, time.Since(start).Round(time.Millisecond), seen)
		case <-t.C:
			t.Reset(poll)
		}
	}
}

func describe(devs []Device) string {
	if len(devs) == 0 {
		return "none (is the disk driver module loaded?)"
	}
	s := make([]string, len(devs))
	for i, d := range devs {
		s[i] = d.String()
	}
	return strings.Join(s, ", ")
}

// Devices lists the block devices in sysfs, sorted by name, with their
// filesystem and partition identifiers. Devices of size 0 (unused loop,
// empty drives) are left out. A device that cannot be read is listed with
// Err set rather than failing the scan.
func (r *Resolver) Devices() ([]Device, error) {
	classDir := filepath.Join(r.sysRoot(), "class", "block")
	ents, err := os.ReadDir(classDir)
	if err != nil {
		return nil, fmt.Errorf("list block devices in %s: %w", classDir, err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)

	tables := map[string][]Partition{} // per disk, read once per scan
	tableErr := map[string]error{}
	var devs []Device
	for _, name := range names {
		sys := filepath.Join(classDir, name)
		if n, err := readInt(filepath.Join(sys, "size")); err == nil && n == 0 {
			continue
		}
		d := Device{Name: name, Path: filepath.Join(r.devRoot(), devName(sys, name))}
		if hs, err := os.ReadDir(filepath.Join(sys, "holders")); err == nil && len(hs) > 0 {
			d.Held = true
		}
		if n, err := readInt(filepath.Join(sys, "partition")); err == nil && n > 0 {
			d.Partition = int(n)
			if target, err := filepath.EvalSymlinks(sys); err == nil {
				d.Parent = filepath.Base(filepath.Dir(target))
			}
			d.PartLabel = ueventVar(sys, "PARTNAME")
		}
		d.FS, d.Err = probePath(d.Path)
		if d.Parent != "" {
			parts, ok := tables[d.Parent]
			if !ok {
				parts, tableErr[d.Parent] = r.partitions(d.Parent)
				tables[d.Parent] = parts
			}
			for _, p := range parts {
				if p.Number == d.Partition {
					d.PartUUID = p.UUID
					if p.Label != "" {
						d.PartLabel = p.Label
					}
				}
			}
			if d.PartUUID == "" && d.Err == nil {
				d.Err = tableErr[d.Parent]
			}
		}
		devs = append(devs, d)
	}
	return devs, nil
}

// partitions reads the partition table of disk.
func (r *Resolver) partitions(disk string) ([]Partition, error) {
	sys := filepath.Join(r.sysRoot(), "class", "block", disk)
	ss := 512
	if n, err := readInt(filepath.Join(sys, "queue", "logical_block_size")); err == nil && n > 0 && n <= 65536 {
		ss = int(n)
	}
	path := filepath.Join(r.devRoot(), devName(sys, disk))
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("size of %s: %w", path, err)
	}
	parts, err := ReadPartitions(f, size, ss)
	if err != nil {
		return nil, fmt.Errorf("partition table of %s: %w", path, err)
	}
	return parts, nil
}

// probePath probes the filesystem on a device node. No filesystem is not an
// error: the disk holding the root partition has none.
func probePath(path string) (FS, error) {
	f, err := os.Open(path)
	if err != nil {
		return FS{}, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	fs, err := Probe(f)
	if err != nil && !errors.Is(err, ErrUnknownFS) {
		return FS{}, fmt.Errorf("read %s: %w", path, err)
	}
	return fs, nil
}

// devName is the node name under /dev: uevent's DEVNAME, else the sysfs
// name with '!' meaning '/' (cciss!c0d0).
func devName(sys, name string) string {
	if n := ueventVar(sys, "DEVNAME"); n != "" && !strings.Contains(n, "..") {
		return n
	}
	return strings.ReplaceAll(name, "!", "/")
}

func ueventVar(sys, key string) string {
	b, err := os.ReadFile(filepath.Join(sys, "uevent"))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+"="); ok {
			return v
		}
	}
	return ""
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return n, nil
}
