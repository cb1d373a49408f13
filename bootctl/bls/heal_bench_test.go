package bls

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// benchESP is an ESP with 5 entries, each with its own 8 MiB kernel and
// 30 MiB initrd (no sharing: the most hashing). The directories are under
// TXBOOT_BENCH_DIR when set (e.g. /dev/shm for tmpfs), else b.TempDir().
func benchESP(b *testing.B) (*fixture, []TxInfo) {
	b.Helper()
	base := os.Getenv("TXBOOT_BENCH_DIR")
	dir := func() string {
		if base == "" {
			return b.TempDir()
		}
		d, err := os.MkdirTemp(base, "bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(d) })
		return d
	}
	f := &fixture{t: &testing.T{}, esp: dir(), host: dir()}
	f.cfg = SyncConfig{ESP: f.esp, Root: "UUID=abcd", Default: 5}
	rnd := func(name string, n int) string {
		buf := make([]byte, n)
		rand.Read(buf)
		p := filepath.Join(f.host, name)
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			b.Fatal(err)
		}
		return p
	}
	var txs []TxInfo
	for id := uint64(1); id <= 5; id++ {
		txs = append(txs, TxInfo{ID: id, Digest: "sha256:" + sha(fmt.Sprint(id)), Kernel: "6.1.0-bench", Good: true,
			KernelPath: rnd(fmt.Sprintf("vmlinuz-%d", id), 8<<20), InitrdPath: rnd(fmt.Sprintf("initrd-%d", id), 30<<20)})
	}
	if _, err := Sync(f.cfg, txs); err != nil {
		b.Fatal(err)
	}
	return f, txs
}

// BenchmarkVerifyESP: what checking every kernel and initrd costs (warm
// page cache): Heal (status, health) hashes the ESP copies; Sync (every
// verb that writes) hashes the store's sources as well.
func BenchmarkVerifyESP(b *testing.B) {
	f, txs := benchESP(b)
	b.Run("heal-all", func(b *testing.B) {
		b.SetBytes(5 * (38 << 20))
		for b.Loop() {
			r, err := Heal(HealConfig{ESP: f.esp, Default: 5}, txs)
			if err != nil || len(r.Checked) != 10 || len(r.Repairs) != 0 {
				b.Fatalf("%+v %v", r, err)
			}
		}
	})
	b.Run("heal-default-and-fallback", func(b *testing.B) {
		b.SetBytes(2 * (38 << 20))
		for b.Loop() {
			r, err := Heal(HealConfig{ESP: f.esp, Default: 5, Only: map[uint64]bool{5: true, 4: true}}, txs)
			if err != nil || len(r.Checked) != 4 {
				b.Fatalf("%+v %v", r, err)
			}
		}
	})
	b.Run("sync-unchanged", func(b *testing.B) {
		b.SetBytes(5 * (38 << 20))
		for b.Loop() {
			r, err := Sync(f.cfg, txs)
			if err != nil || len(r.Copied) != 0 {
				b.Fatalf("%+v %v", r, err)
			}
		}
	})
}
