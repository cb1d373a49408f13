package repo

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/testkit"
	"golang.org/x/sys/unix"
)

// Raw xattr values as the kernel stores them.
var (
	// capDacReadSearch is security.capability for cap_dac_read_search+ep
	// (VFS_CAP_REVISION_2 | effective; permitted bit 2).
	capDacReadSearch = func() []byte {
		b := make([]byte, 20)
		binary.LittleEndian.PutUint32(b[0:], 0x02000001)
		binary.LittleEndian.PutUint32(b[4:], 1<<2)
		return b
	}()
	// aclUser1000 is system.posix_acl_access for u::rw-,u:1000:r--,g::r--,m::r--,o::r--
	// and aclUser1000RO the same without the owner's write bit: a file's
	// object loses its write bits, in its mode and in its access ACL.
	aclUser1000   = aclUser1000Perm(6)
	aclUser1000RO = aclUser1000Perm(4)
)

func aclUser1000Perm(owner uint16) []byte {
	{
		b := binary.LittleEndian.AppendUint32(nil, 2)
		for _, e := range []struct {
			tag, perm uint16
			id        uint32
		}{{0x01, owner, ^uint32(0)}, {0x02, 4, 1000}, {0x04, 4, ^uint32(0)}, {0x10, 4, ^uint32(0)}, {0x20, 4, ^uint32(0)}} {
			b = binary.LittleEndian.AppendUint16(b, e.tag)
			b = binary.LittleEndian.AppendUint16(b, e.perm)
			b = binary.LittleEndian.AppendUint32(b, e.id)
		}
		return b
	}
}

// xattrTree is ptTree with a file capability, a user xattr on a file and
// on a directory, and an ACL; value distinguishes two versions.
func xattrTree(t *testing.T, value string) string {
	t.Helper()
	d := ptTree(t, map[string]string{"bin/capcat": "#!cat\n", "share/acl.txt": "acl\n", "share/note": "same content\n"})
	set := func(rel, name string, v []byte) {
		t.Helper()
		if err := unix.Lsetxattr(filepath.Join(d, rel), name, v, 0); err != nil {
			t.Fatalf("setxattr %s %s: %v", rel, name, err)
		}
	}
	set("bin/capcat", "security.capability", capDacReadSearch)
	set("share/note", "user.txtest", []byte(value))
	set("share", "user.txtest-dir", []byte("dir "+value))
	set("share/acl.txt", "system.posix_acl_access", aclUser1000)
	return d
}

func wantXattr(t *testing.T, path, name string, want []byte) {
	t.Helper()
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(path, name, buf)
	if err != nil || !bytes.Equal(buf[:n], want) {
		t.Errorf("%s: %s = %q, %v; want %q", path, name, buf[:max(n, 0)], err, want)
	}
}

// TestPullKeepsXattrs: capabilities, xattrs and ACLs survive commit →
// publish → pull (a full pull, then an update that may use a delta) with
// equal digests, and verify reports a stripped capability.
func TestPullKeepsXattrs(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "needs root: security.capability can only be set by root")
	}
	key := ptNewKey(t)
	src := ptStore(t)
	var txs []*txstore.Tx
	for _, v := range []string{"one", "two"} {
		tx, _, err := src.Commit(xattrTree(t, v), txstore.CommitOptions{Summary: v})
		if err != nil {
			t.Fatal(err)
		}
		txs = append(txs, tx)
	}
	if txs[0].Digest == txs[1].Digest {
		t.Fatal("trees differing only in an xattr value have the same digest")
	}
	dir := t.TempDir()
	if _, err := Publish(src, dir, []uint64{txs[0].ID, txs[1].ID}, PublishOptions{Key: key.priv}); err != nil {
		t.Fatal(err)
	}
	srv := ptNewServer(t, dir)
	dst := ptStore(t)
	for i, v := range []string{"one", "two"} {
		tx, _, err := ptPull(t, dst, srv.URL, PullOptions{Trusted: []sign.PublicKey{key.pub}, Tx: v})
		if err != nil {
			t.Fatalf("pull %s: %v", v, err)
		}
		if tx.Digest != txs[i].Digest {
			t.Errorf("pulled %s: digest %s, committed %s", v, tx.Digest, txs[i].Digest)
		}
		ptVerifyFull(t, dst, tx.ID)
		usr := dst.TreeDir(tx.ID)
		wantXattr(t, filepath.Join(usr, "bin/capcat"), "security.capability", capDacReadSearch)
		wantXattr(t, filepath.Join(usr, "share/note"), "user.txtest", []byte(v))
		wantXattr(t, filepath.Join(usr, "share"), "user.txtest-dir", []byte("dir "+v))
		wantXattr(t, filepath.Join(usr, "share/acl.txt"), "system.posix_acl_access", aclUser1000RO)
	}
	// Stripping the capability (from the object every tree links) is
	// damage that fast verify names.
	capcat := filepath.Join(dst.TreeDir(2), "bin/capcat")
	if err := unix.Lremovexattr(capcat, "security.capability"); err != nil {
		t.Fatal(err)
	}
	probs, err := dst.Verify(2, txstore.VerifyFast)
	if err != nil {
		t.Fatal(err)
	}
	if len(probs) == 0 || !strings.Contains(probs[0].String(), "security.capability") {
		t.Fatalf("verify after stripping the capability: %v", probs)
	}
}
