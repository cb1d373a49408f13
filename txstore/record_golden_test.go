package txstore

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/txboot/txboot/txstore/bootstate"
	"github.com/txboot/txboot/txstore/records"
	"github.com/txboot/txboot/txstore/sign"
)

// The golden records pin store.db's encoding: the JSON of a tx record and
// of an event, and the big-endian keys. Every existing store holds records
// in this form, so a change must fail here. They are edited by hand, on
// purpose (no -update flag): changing them is a format change that needs a
// migration. Each file holds one value exactly as stored, plus a final
// newline for editors, which the test drops.
const (
	goldenTxRecord    = "testdata/tx-record.json"
	goldenEventRecord = "testdata/event-record.json"
)

// goldenTx sets every field, so a renamed or dropped JSON key shows.
func goldenTx() *Tx {
	created := time.Date(2026, 3, 4, 5, 6, 7, 123456789, time.UTC)
	return &Tx{
		ID:       7,
		Digest:   "sha256:3f11af06ca9e191e50847ee0f8dbd96a8cda0b5361d57e90487ff2370270bdc9",
		Parent:   6,
		Created:  created,
		Summary:  "update \"hello\" to 2.10",
		Kernels:  []string{"6.1.0-57-amd64", "6.1.0-57-cloud-amd64"},
		Entries:  17,
		Bytes:    123456,
		Manifest: "cfa19d74d19650bbbf2dff9df61891a8b42b3cd0d8f4101d539d9ad481beb3ad",
		Pinned:   true,
		Updated:  created.Add(90 * time.Second),
		Signatures: []sign.Signature{{
			KeyID: "00112233445566778899aabbccddeeff",
			Sig:   bytes.Repeat([]byte{0xA5, 0x5A}, 32),
		}},
		Version: "2026.03-1",
		Origin:  "https://updates.example.com/txboot",
		PkgChanges: []PkgChange{
			{Name: "hello", Arch: "amd64", Old: "2.10-2", New: "2.10-3"},
			{Name: "libfoo1", Arch: "i386", New: "1.0-1"},
			{Name: "oldpkg", Arch: "all", Old: "0.9"},
		},
		Boot: bootstate.Boot{State: bootstate.Trying, TriesLeft: 1, Tries: 2, LastFailure: "health check failed"},
	}
}

func goldenEvent() Event {
	return Event{Time: time.Date(2026, 3, 4, 5, 8, 0, 5, time.UTC), Kind: "fallback", TxID: 7, Detail: "tx 8 failed: verify"}
}

func readGoldenRecord(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(b, []byte("\n"))
}

// rawDB runs fn on the store's database outside the Store, as another
// version of txboot would see it.
func rawDB(t *testing.T, root string, fn func(txs, meta, events *bbolt.Bucket) error) {
	t.Helper()
	db, err := bbolt.Open(filepath.Join(root, DirName, "store.db"), 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bbolt.Tx) error {
		txs, meta, events, err := records.Buckets(tx)
		if err != nil {
			return err
		}
		return fn(txs, meta, events)
	}); err != nil {
		t.Fatal(err)
	}
}

// TestRecordGoldenDecode: records written in the golden form (by an older
// txboot, say) read back as exactly the golden values through the Store.
func TestRecordGoldenDecode(t *testing.T) {
	txRec, evRec := readGoldenRecord(t, goldenTxRecord), readGoldenRecord(t, goldenEventRecord)
	root := t.TempDir()
	s, err := Open(root, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	rawDB(t, root, func(txs, meta, events *bbolt.Bucket) error {
		if err := txs.Put([]byte{0, 0, 0, 0, 0, 0, 0, 7}, txRec); err != nil {
			return err
		}
		if err := events.Put([]byte{0, 0, 0, 0, 0, 0, 0, 1}, evRec); err != nil {
			return err
		}
		if err := events.SetSequence(1); err != nil {
			return err
		}
		return meta.Put([]byte("default"), []byte{0, 0, 0, 0, 0, 0, 0, 7})
	})
	s, err = Open(root, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Get(7)
	if err != nil {
		t.Fatalf("golden tx record no longer reads: %v", err)
	}
	if want := goldenTx(); !reflect.DeepEqual(got, want) {
		t.Fatalf("golden tx record reads as\n%+v\nwant\n%+v", got, want)
	}
	evs, err := s.Events(0)
	if err != nil {
		t.Fatal(err)
	}
	want := goldenEvent()
	want.Seq = 1
	if len(evs) != 1 || !reflect.DeepEqual(evs[0], want) {
		t.Fatalf("golden event reads as %+v, want %+v", evs, want)
	}
	if d, err := s.Default(); err != nil || d != 7 {
		t.Fatalf("default = %d, %v; want 7", d, err)
	}
}

// TestRecordGoldenEncode: the store writes the golden bytes under the
// golden keys.
func TestRecordGoldenEncode(t *testing.T) {
	txRec, evRec := readGoldenRecord(t, goldenTxRecord), readGoldenRecord(t, goldenEventRecord)
	root := t.TempDir()
	s, err := Open(root, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	rawDB(t, root, func(txs, meta, events *bbolt.Bucket) error {
		if v := meta.Get([]byte("version")); string(v) != "1" {
			t.Errorf("meta version = %q, want \"1\"", v)
		}
		if v := meta.Get([]byte("next")); !bytes.Equal(v, []byte{0, 0, 0, 0, 0, 0, 0, 1}) {
			t.Errorf("meta next = %x, want 8-byte big-endian 1", v)
		}
		if err := records.PutTx(txs, goldenTx()); err != nil {
			return err
		}
		if err := records.AppendEvent(events, goldenEvent()); err != nil {
			return err
		}
		if got := txs.Get([]byte{0, 0, 0, 0, 0, 0, 0, 7}); !bytes.Equal(got, txRec) {
			t.Errorf("tx record under key 7 =\n%s\nwant (%s)\n%s", got, goldenTxRecord, txRec)
		}
		if got := events.Get([]byte{0, 0, 0, 0, 0, 0, 0, 1}); !bytes.Equal(got, evRec) {
			t.Errorf("event under key 1 =\n%s\nwant (%s)\n%s", got, goldenEventRecord, evRec)
		}
		return nil
	})
}
