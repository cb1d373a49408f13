package qemutests

import (
	"path/filepath"
	"testing"

	"github.com/txboot/txboot/qemu-tests/harness"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testtree"
)

// TestBootDamagedDB: store.db has every page after the two meta pages
// overwritten (bbolt opens it, then panics on the first read). The entry's
// txboot.tx=2 txboot.digest=… still boots tx 2, verified against its
// manifest object found in the CAS; the console says boot counting is off,
// and boot.json records why.
func TestBootDamagedDB(t *testing.T) {
	k := harness.CloudKernel(t)
	_, txs := base(t)
	img := image(t, func(root string) {
		must(t, testtree.DamageDB(filepath.Join(root, txstore.DirName, "store.db"), testtree.DamageDataPages))
	})
	r := boot(t, k, img, "root=UUID="+rootUUID+" txboot.tx=2 txboot.digest="+txs[1].Digest)
	if r.marker != "tx-2" {
		t.Errorf("booted marker %q, want tx-2", r.marker)
	}
	mustContain(t, r.out, "the store's database is damaged", "BOOT COUNTING IS OFF", "TXTEST usr=ro",
		`"booted":2`, `"no_database":"storedamaged:`, "no database, boot counting off")
}
