package bls

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/txboot/txboot/txstore/testkit"
)

// syncWithin runs Sync, failing the test instead of hanging when it blocks
// (a FIFO on the ESP). The limit only guards against a hang; nothing is
// asserted about how long a sync takes.
func (f *fixture) syncWithin(txs ...TxInfo) (Report, error) {
	f.t.Helper()
	type res struct {
		r   Report
		err error
	}
	ch := make(chan res, 1)
	go func() {
		r, err := Sync(f.cfg, txs)
		ch <- res{r, err}
	}()
	select {
	case v := <-ch:
		return v.r, v.err
	case <-time.After(30 * time.Second):
		unblockFIFOs(f.esp)
		f.t.Fatal("Sync hung (blocked on a FIFO on the ESP?)")
	}
	return Report{}, nil
}

// unblockFIFOs opens every FIFO under root for writing, so that a reader
// blocked in open(2) returns and the test binary can exit.
func unblockFIFOs(root string) {
	filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode()&os.ModeNamedPipe != 0 {
			if fd, err := unix.Open(p, unix.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
				unix.Close(fd)
			}
		}
		return nil
	})
}

func (f *fixture) mkfifo(rel string) {
	f.t.Helper()
	if err := unix.Mkfifo(filepath.Join(f.esp, rel), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) exists(rel string) bool {
	_, err := os.Lstat(filepath.Join(f.esp, rel))
	return err == nil
}

// One bad entry, or one foreign file on the ESP, must not stop the others:
// tx 1 (on trial, now good) is blessed and tx 2 (new) gets its entry.
func TestSyncOneBadEntryDoesNotStopOthers(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(f *fixture, t3 *TxInfo)
		wantErr string // "" for no error; else a substring naming the culprit
		check   func(t *testing.T, f *fixture)
	}{
		{"kernel version with a space", func(f *fixture, t3 *TxInfo) { t3.Kernel = "6.1 evil" }, "tx 3", nil},
		{"foreign directory named .conf", func(f *fixture, t3 *TxInfo) {
			f.write("loader/entries/other.conf/x", "x")
		}, "", func(t *testing.T, f *fixture) {
			if f.read("loader/entries/other.conf/x") != "x" {
				t.Fatal("foreign directory changed")
			}
		}},
		{"2 MB foreign .conf", func(f *fixture, t3 *TxInfo) {
			f.write("loader/entries/big.conf", strings.Repeat("#", 2<<20))
		}, "", func(t *testing.T, f *fixture) {
			if len(f.read("loader/entries/big.conf")) != 2<<20 {
				t.Fatal("big file changed")
			}
		}},
		{"FIFO named .conf", func(f *fixture, t3 *TxInfo) { f.mkfifo("loader/entries/fifo.conf") }, "", nil},
		{"FIFO with the name of tx 3's entry", func(f *fixture, t3 *TxInfo) { f.mkfifo("loader/entries/txboot-3+3.conf") }, "txboot-3+3.conf", func(t *testing.T, f *fixture) {
			if st, err := os.Lstat(filepath.Join(f.esp, "loader/entries/txboot-3+3.conf")); err != nil || st.Mode()&os.ModeNamedPipe == 0 {
				t.Fatalf("FIFO not left alone: %v", err)
			}
		}},
		{"loader.conf is a FIFO", func(f *fixture, t3 *TxInfo) {
			os.Remove(filepath.Join(f.esp, LoaderConf))
			f.mkfifo(LoaderConf)
		}, "loader.conf", nil},
		{"foreign symlink named .conf", func(f *fixture, t3 *TxInfo) {
			if err := os.Symlink("/dev/zero", filepath.Join(f.esp, "loader/entries/zero.conf")); err != nil {
				t.Fatal(err)
			}
		}, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			t1, t2, t3 := f.tx(1, "kernel A"), f.tx(2, "kernel B"), f.tx(3, "kernel C")
			f.sync(t1)
			f.wantEntries("txboot-1+3.conf")
			tt.setup(f, &t3)
			f.cfg.Default = 2
			_, err := f.syncWithin(good(t1), t2, t3)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Sync: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Sync error = %v, want one naming %q", err, tt.wantErr)
			}
			if !f.exists("loader/entries/txboot-1.conf") || f.exists("loader/entries/txboot-1+3.conf") {
				t.Fatalf("tx 1 not blessed: %q", f.entries())
			}
			if !strings.Contains(f.read("loader/entries/txboot-1.conf"), "sort-key txboot-2-good") {
				t.Fatal("tx 1's entry not rewritten")
			}
			if !strings.Contains(f.read("loader/entries/txboot-2+3.conf"), "txboot.tx=2 ") {
				t.Fatal("tx 2 has no entry")
			}
			if tt.check != nil {
				tt.check(t, f)
			}
		})
	}
}

// The report says, per tx, what failed and what the entries are called.
func TestSyncReportsProblemsPerTx(t *testing.T) {
	f := newFixture(t)
	t1, t2 := f.tx(1, "kernel A"), f.tx(2, "kernel B")
	f.sync(t1)
	t2.Kernel = "6.1 evil"
	f.mkfifo("loader/entries/fifo.conf")
	r, err := f.syncWithin(good(t1), t2)
	if !errors.Is(err, ErrTx) {
		t.Fatalf("Sync error = %v", err)
	}
	if len(r.Problems) != 1 || r.Problems[0].TxID != 2 || r.TxErr(1) != nil || r.TxErr(2) == nil {
		t.Fatalf("problems %+v", r.Problems)
	}
	if r.Entries[1] != "txboot-1.conf" {
		t.Fatalf("entries %v", r.Entries)
	}
	if len(r.Skipped) != 1 || r.Skipped[0].Path != "loader/entries/fifo.conf" || !errors.Is(r.Skipped[0].Err, ErrNotRegular) {
		t.Fatalf("skipped %+v", r.Skipped)
	}
}

// Nothing below the ESP's mount point is reached through a symlink:
// victims outside keep every file.
func TestSyncESPSymlinksNotFollowed(t *testing.T) {
	kernelHex := sha("kernel A")
	tests := []struct {
		name   string
		link   string            // path on the ESP replaced by a symlink to the victim
		victim map[string]string // files in the victim directory
		fatal  bool              // nothing can be done at all
	}{
		{"loader/entries", EntriesDir, map[string]string{"txboot-9.conf": "linux /x\n", "txboot-1+3.conf": "linux /y\n"}, true},
		{"loader", "loader", map[string]string{"loader.conf": "timeout 3\n", "entries/txboot-9.conf": "linux /x\n"}, true},
		{"txboot/kernels", KernelsDir, map[string]string{sha("other") + "/vmlinuz": "precious"}, false},
		{"txboot/kernels/<hex>", KernelsDir + "/" + kernelHex, map[string]string{"keep": "precious"}, false},
		{"txboot", "txboot", map[string]string{"kernels/" + sha("other") + "/vmlinuz": "precious"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			t1 := f.tx(1, "kernel A")
			f.sync(t1)
			victim := t.TempDir()
			for p, c := range tt.victim {
				os.MkdirAll(filepath.Dir(filepath.Join(victim, p)), 0o755)
				if err := os.WriteFile(filepath.Join(victim, p), []byte(c), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			before := mtimes(t, victim)
			link := filepath.Join(f.esp, tt.link)
			if err := os.RemoveAll(link); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(victim, link); err != nil {
				t.Fatal(err)
			}
			_, err := f.syncWithin(good(t1), f.tx(2, "kernel B"))
			if err == nil || !errors.Is(err, ErrNotDir) {
				t.Fatalf("Sync error = %v, want ErrNotDir", err)
			}
			after := mtimes(t, victim)
			if len(after) != len(before) {
				t.Fatalf("victim changed: %v -> %v", before, after)
			}
			for p, c := range tt.victim {
				if b, err := os.ReadFile(filepath.Join(victim, p)); err != nil || string(b) != c {
					t.Fatalf("victim %s: %q, %v", p, b, err)
				}
			}
			if st, err := os.Lstat(link); err != nil || st.Mode()&os.ModeSymlink == 0 {
				t.Fatalf("symlink %s not left alone: %v", tt.link, err)
			}
			if !tt.fatal && !f.exists("loader/entries/txboot-1.conf") {
				t.Fatalf("tx 1 not blessed: %q", f.entries())
			}
		})
	}
}

func TestListDoesNotFollowSymlinks(t *testing.T) {
	f := newFixture(t)
	victim := t.TempDir()
	os.WriteFile(filepath.Join(victim, "txboot-5.conf"), []byte("linux /x\noptions txboot.tx=5\n"), 0o644)
	unix.Mkfifo(filepath.Join(victim, "txboot-6.conf"), 0o644)
	os.MkdirAll(filepath.Join(f.esp, "loader"), 0o755)
	if err := os.Symlink(victim, filepath.Join(f.esp, EntriesDir)); err != nil {
		t.Fatal(err)
	}
	got, err := List(f.esp, "")
	if !errors.Is(err, ErrNotDir) || len(got) != 0 {
		t.Fatalf("List through a symlink = %+v, %v", got, err)
	}
}

// fakeESP models a small ESP on top of the test directory: writes beyond
// capacity (the bytes of all regular files under it) fail with ENOSPC.
type fakeESP struct {
	root     string
	capacity int64
}

func (e *fakeESP) used() int64 {
	var n int64
	filepath.Walk(e.root, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			n += info.Size()
		}
		return nil
	})
	return n
}

func (f *fixture) limitESP(extra int64) *fakeESP {
	f.t.Helper()
	e := &fakeESP{root: f.esp}
	e.capacity = e.used() + extra
	oldW, oldF := beforeWrite, freeBytes
	beforeWrite = func(n int) error {
		if e.used()+int64(n) > e.capacity {
			return unix.ENOSPC
		}
		return nil
	}
	freeBytes = func(int) (int64, error) { return e.capacity - e.used(), nil }
	f.t.Cleanup(func() { beforeWrite, freeBytes = oldW, oldF })
	return e
}

func TestSyncFullESP(t *testing.T) {
	big := strings.Repeat("K", 4000)
	t.Run("blessing needs no space", func(t *testing.T) {
		f := newFixture(t)
		t1 := f.tx(1, "kernel A")
		f.sync(t1)
		f.limitESP(0)
		f.cfg.Default = 2
		r, err := f.syncWithin(good(t1), f.tx(2, big))
		if !errors.Is(err, ErrNoSpace) || !errors.Is(err, unix.ENOSPC) {
			t.Fatalf("Sync error = %v", err)
		}
		if r.Entries[1] != "txboot-1.conf" || !f.exists("loader/entries/txboot-1.conf") {
			t.Fatalf("tx 1 not blessed: %q", f.entries())
		}
		if e := r.TxErr(2); e == nil || !strings.Contains(e.Error(), "need 4000 bytes, 0 free") {
			t.Fatalf("tx 2's problem: %v", e)
		}
	})
	t.Run("old entries make room", func(t *testing.T) {
		f := newFixture(t)
		f.cfg.Keep = 2
		t1, t2, t3 := f.tx(1, big+"1"), f.tx(2, big+"2"), f.tx(3, big+"3")
		f.sync(t1, t2, t3) // keeps 2 and 3
		f.cfg.Keep = 3
		f.sync(t1, t2, t3)
		f.wantEntries("txboot-1+3.conf", "txboot-2+3.conf", "txboot-3+3.conf")
		f.limitESP(1000)
		f.cfg.Keep = 2
		t4 := f.tx(4, big+"4")
		f.cfg.Default = 4
		r, err := f.syncWithin(t1, t2, t3, t4)
		if err != nil {
			t.Fatalf("Sync: %v", err)
		}
		f.wantEntries("txboot-3+3.conf", "txboot-4+3.conf")
		for _, k := range []string{big + "3", big + "4"} {
			if !f.exists(filepath.Join(KernelsDir, sha(k), "vmlinuz")) {
				t.Fatalf("kernel of a kept entry missing: %+v", r)
			}
		}
	})
	t.Run("bad entries make room, good ones never", func(t *testing.T) {
		f := newFixture(t)
		t1, t2 := bad(f.tx(1, big+"1")), good(f.tx(2, big+"2"))
		f.sync(t1, t2)
		f.limitESP(1000)
		f.cfg.Default = 3
		r, err := f.syncWithin(t1, t2, f.tx(3, big+"3"))
		if r.TxErr(3) != nil || r.TxErr(2) != nil || !errors.Is(r.TxErr(1), ErrNoSpace) {
			t.Fatalf("Sync: %v", err)
		}
		f.wantEntries("txboot-2.conf", "txboot-3+3.conf")
		if !f.exists(filepath.Join(KernelsDir, sha(big+"2"), "vmlinuz")) || f.exists(filepath.Join(KernelsDir, sha(big+"1"))) {
			t.Fatal("wrong kernel dropped")
		}
	})
	t.Run("still full", func(t *testing.T) {
		f := newFixture(t)
		t1 := good(f.tx(1, "kernel A"))
		f.sync(t1)
		f.limitESP(100)
		f.cfg.Default = 2
		r, err := f.syncWithin(t1, f.tx(2, big))
		if err == nil || !strings.Contains(err.Error(), "tx 2: copy") || !strings.Contains(err.Error(), "need 4000 bytes, 100 free") {
			t.Fatalf("Sync error = %v", err)
		}
		f.wantEntries("txboot-1.conf")
		if !f.exists(filepath.Join(KernelsDir, sha("kernel A"), "vmlinuz")) || len(r.Removed) != 0 {
			t.Fatalf("good tx's files touched: %+v", r)
		}
	})
}

// The same on a real full filesystem: a tiny tmpfs, when running as root.
func TestSyncFullTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "needs root to mount a small tmpfs")
	}
	f := newFixture(t)
	if err := unix.Mount("tmpfs", f.esp, "tmpfs", 0, "size=256k"); err != nil {
		testkit.Skipf(t, "cannot mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(f.esp, unix.MNT_DETACH) })
	t1 := f.tx(1, "kernel A")
	f.sync(t1)
	if err := os.WriteFile(filepath.Join(f.esp, "filler"), make([]byte, 256<<10), 0o644); err == nil || !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("filler: %v", err)
	}
	f.cfg.Default = 2
	_, err := f.syncWithin(good(t1), f.tx(2, strings.Repeat("K", 64<<10)))
	if err == nil || !strings.Contains(err.Error(), "tx 2") {
		t.Fatalf("Sync error = %v", err)
	}
	if !f.exists("loader/entries/txboot-1.conf") {
		t.Fatalf("tx 1 not blessed on a full ESP: %q", f.entries())
	}
}

func TestCheckOptions(t *testing.T) {
	tests := []struct {
		in   string
		bad  string // "" if accepted; else a substring of the error
		kept string
	}{
		{"quiet console=ttyS0", "", "quiet console=ttyS0"},
		{"rd.txboot.shell=1 rd.txboot.debug=1", "", "rd.txboot.shell=1 rd.txboot.debug=1"},
		{"xtxboot.tx=3 mytxboot=1 rootwait rootfstype=ext4", "", "xtxboot.tx=3 mytxboot=1 rootwait rootfstype=ext4"},
		{"quiet txboot.tx=3", `"txboot.tx=3"`, "quiet"},
		{"txboot.digest=sha256:00 quiet", "txboot.digest", "quiet"},
		{"txboot.image=sha256:00 quiet", "txboot.image", "quiet"},
		{"quiet TXBOOT.image=x txboot.image", "txboot.image", "quiet TXBOOT.image=x"},
		{"txboot.force=1", "txboot.force", ""},
		// Policy settings initagent reads are the user's to choose for
		// every entry; they do not name or pin a tx.
		{"txboot.verify=full txboot.watchdog=10 txboot.timeout=60", "", "txboot.verify=full txboot.watchdog=10 txboot.timeout=60"},
		{"txboot.verfy=full", "unknown", ""},
		{"txboot", "unknown", ""},
		{"root=/dev/sdz ro", "--root-arg", "ro"},
		{"initrd=/evil.img", "initrd", ""},
		{`"txboot.tx=3" a`, "txboot.tx", "a"},
		{`a txboot.tx="3 4" b`, "txboot.tx", "a b"},
		{"-- txboot.tx=3", "", "-- txboot.tx=3"},
	}
	for _, tt := range tests {
		err := CheckOptions(tt.in)
		switch {
		case tt.bad == "" && err != nil:
			t.Errorf("CheckOptions(%q) = %v", tt.in, err)
		case tt.bad != "" && (!errors.Is(err, ErrReservedOption) || !strings.Contains(err.Error(), tt.bad)):
			t.Errorf("CheckOptions(%q) = %v, want %q", tt.in, err, tt.bad)
		}
		kept, dropped := StripReservedOptions(tt.in)
		if kept != tt.kept || (tt.bad == "") != (len(dropped) == 0) {
			t.Errorf("StripReservedOptions(%q) = %q, %q; want %q", tt.in, kept, dropped, tt.kept)
		}
		if err := CheckOptions(kept); err != nil {
			t.Errorf("stripped %q still rejected: %v", kept, err)
		}
	}
	// Sync refuses them too: no entry ever carries one.
	f := newFixture(t)
	f.cfg.Options = "quiet txboot.tx=3"
	if _, err := Sync(f.cfg, []TxInfo{f.tx(1, "k")}); !errors.Is(err, ErrConfig) || !errors.Is(err, ErrReservedOption) {
		t.Fatalf("Sync with txboot.tx= in the options: %v", err)
	}
	if f.exists(EntriesDir) {
		t.Fatal("Sync wrote to the ESP despite bad options")
	}
}
