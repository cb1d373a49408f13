package txstore_test

import (
	"encoding/binary"
	"os"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testtree"
)

// bbolt's meta page: a 16-byte page header, then magic, version, page
// size, flags, root bucket (16), freelist, high water mark, txid and the
// checksum of the 56 bytes before it.
const (
	metaHeader   = 16
	metaPageSize = metaHeader + 8
	metaTxid     = metaHeader + 48
	metaChecksum = metaHeader + 56
)

// tearNewestMeta damages the meta page with the higher txid the way a
// power cut mid-write can: its checksummed bytes no longer match, so bbolt
// falls back to the other, one write older. It returns that txid.
func tearNewestMeta(t *testing.T, db string) uint64 {
	t.Helper()
	f, err := os.OpenFile(db, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, metaChecksum+8)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	size := int64(binary.LittleEndian.Uint32(b[metaPageSize:]))
	txid0 := binary.LittleEndian.Uint64(b[metaTxid:])
	if _, err := f.ReadAt(b, size); err != nil {
		t.Fatal(err)
	}
	txid1 := binary.LittleEndian.Uint64(b[metaTxid:])
	off, txid := int64(0), txid0
	if txid1 > txid0 {
		off, txid = size, txid1
	}
	// The high water mark, half written: inside the checksummed region.
	if _, err := f.WriteAt([]byte{0xde, 0xad, 0xbe, 0xef}, off+metaHeader+40); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return txid
}

// TestTornMetaKeepsNewestTree: with the newest meta page torn, bbolt reads
// the database as of one write before, and tx 2's record is gone. The
// next writer's open must not delete tx 2's tree as an unrecorded
// leftover: its manifest describes it, so it is recorded again and
// verifies.
func TestTornMetaKeepsNewestTree(t *testing.T) {
	s, root := newStore(t)
	var digests []string
	for i := 1; i <= 2; i++ {
		tx, _, err := s.Commit(sampleDir(t, testtree.File{Path: "share/n", Data: string(rune('0' + i)), Mode: 0o644}), txstore.CommitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, tx.Digest)
	}
	s.Close()
	tearNewestMeta(t, dbPath(root))

	s, err := txstore.Open(root, txstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(s.TreeDir(2)); err != nil {
		t.Fatalf("tx 2's tree was removed by the open: %v", err)
	}
	tx, err := s.Get(2)
	if err != nil {
		t.Fatalf("tx 2 is not recorded again: %v", err)
	}
	if tx.Digest != digests[1] {
		t.Fatalf("tx 2 recorded with digest %s, want %s", tx.Digest, digests[1])
	}
	if probs, err := s.Verify(2, txstore.VerifyFull); err != nil || len(probs) > 0 {
		t.Fatalf("tx 2 does not verify: %v %v", probs, err)
	}
	if tx1, err := s.Get(1); err != nil || tx1.Digest != digests[0] {
		t.Fatalf("tx 1: %v %v", tx1, err)
	}
	// The next commit takes a fresh id.
	tx3, _, err := s.Commit(sampleDir(t, testtree.File{Path: "share/n", Data: "3", Mode: 0o644}), txstore.CommitOptions{})
	if err != nil || tx3.ID != 3 {
		t.Fatalf("next commit: %v %v", tx3, err)
	}
}
