package cli

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/repo"
	"github.com/txboot/txboot/txstore/sign"
	"golang.org/x/sys/unix"
)

// ErrExists: keygen refuses to overwrite a key file.
var ErrExists = errors.New("file exists (not overwritten)")

func init() {
	var repoDir, keyPath, version, out string
	register(&verb{name: "publish", args: "--repo DIR [--key KEY] [--version V] [ID ...]",
		help: "write txs (default: the default tx) into the static repository DIR (signed with --key)",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&repoDir, "repo", "", "repository directory (created when missing)")
			fs.StringVar(&keyPath, "key", "", "ed25519 private key (PEM) to sign the index and the txs with")
			fs.StringVar(&version, "version", "", "version string of the tx in the index (default: its summary, else tx-ID); one tx only")
		},
		run: func(e *env, args []string) error {
			if repoDir == "" {
				return usagef("publish needs --repo DIR")
			}
			ids := make([]uint64, 0, len(args))
			for _, a := range args {
				id, err := parseID(a)
				if err != nil {
					return err
				}
				ids = append(ids, id)
			}
			if version != "" {
				if len(ids) > 1 {
					return usagef("--version names one tx; %d given", len(ids))
				}
				if err := checkText("--version", version); err != nil {
					return err
				}
			}
			var key ed25519.PrivateKey
			if keyPath != "" {
				k, err := sign.LoadPrivateKey(keyPath)
				if err != nil {
					return err
				}
				key = k
			}
			// Signing also writes the signature into the local record.
			s, err := e.openExisting(key != nil)
			if err != nil {
				return err
			}
			defer s.Close()
			if len(ids) == 0 {
				def, err := s.Default()
				if err != nil {
					return err
				}
				if def == 0 {
					return fmt.Errorf("publish: %w: no default tx (name one)", txstore.ErrNotFound)
				}
				ids = []uint64{def}
			}
			e.progress("publishing to %s…", repoDir)
			st, err := repo.Publish(s, repoDir, ids, repo.PublishOptions{Key: key, Version: version, Timeout: e.timeout})
			e.progressDone()
			if err != nil {
				return err
			}
			if e.json {
				return e.printJSON(st)
			}
			for _, t := range st.Txs {
				what := "already published"
				if t.New {
					what = fmt.Sprintf("published, %d objects (%s stored)", t.Objects, human(t.Stored))
				}
				if t.Signed {
					what += ", signature added"
				}
				fmt.Fprintf(e.stdout, "tx %d %s %q: %s\n", t.ID, t.Digest, printable(t.Version), what)
			}
			fmt.Fprintf(e.stdout, "  %d new objects, %s written; %d objects already there (%s skipped)\n",
				st.NewObjects, human(st.BytesWritten), st.SkippedObjects, human(st.BytesSkipped))
			switch {
			case !st.IndexWritten:
				fmt.Fprintf(e.stdout, "  index unchanged; %s\n", ms(st.Duration))
			case st.IndexSigned:
				fmt.Fprintf(e.stdout, "  index written and signed; %s\n", ms(st.Duration))
			default:
				fmt.Fprintf(e.stdout, "  index written (unsigned); %s\n", ms(st.Duration))
			}
			return nil
		}})

	register(&verb{name: "keygen", args: "--out PREFIX",
		help: "make an ed25519 signing key: PREFIX.key (private, 0600) and PREFIX.pem (public)",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&out, "out", "", "path prefix of the two files")
		},
		run: func(e *env, args []string) error {
			if out == "" || len(args) != 0 {
				return usagef("keygen takes --out PREFIX and no arguments")
			}
			priv, pub, err := sign.GenerateKey()
			if err != nil {
				return fmt.Errorf("keygen: %w", err)
			}
			keyFile, pubFile := out+".key", out+".pem"
			for _, p := range []string{keyFile, pubFile} {
				if _, err := os.Lstat(p); err == nil {
					return fmt.Errorf("keygen: %s: %w", p, ErrExists)
				}
			}
			if err := createDurable(keyFile, priv, 0o600); err != nil {
				return fmt.Errorf("keygen: %w", err)
			}
			if err := createDurable(pubFile, pub, 0o644); err != nil {
				os.Remove(keyFile) // nothing half made: no private key without its public half
				return fmt.Errorf("keygen: %w", err)
			}
			k, err := sign.ParsePublicKey(pub)
			if err != nil {
				return fmt.Errorf("keygen: %w", err)
			}
			id := sign.KeyID(k)
			if e.json {
				return e.printJSON(map[string]string{"key_id": id, "private": keyFile, "public": pubFile})
			}
			fmt.Fprintf(e.stdout, "key %s\n  private: %s (keep it secret)\n  public:  %s (install in /etc/txboot/trusted.d/ or pass to pull --trust)\n", id, keyFile, pubFile)
			return nil
		}})
}

// createDurable writes a new file p that must not exist yet: a temp file
// with mode perm, fsynced, then link(2)ed to p (which fails rather than
// replace anything, even a file created meanwhile), and the directory
// fsynced. p is never seen half written.
func createDurable(p string, data []byte, perm uint32) error {
	dir, base := filepath.Dir(p), filepath.Base(p)
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(dfd)
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := "." + base + ".tmp-" + hex.EncodeToString(rnd[:])
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
	if err != nil {
		return fmt.Errorf("create %s: %w", filepath.Join(dir, tmp), err)
	}
	defer unix.Unlinkat(dfd, tmp, 0)
	f := os.NewFile(uintptr(fd), filepath.Join(dir, tmp))
	err = f.Chmod(os.FileMode(perm)) // not narrowed or widened by the umask
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := unix.Linkat(dfd, tmp, dfd, base, 0); err != nil {
		if err == unix.EEXIST {
			return fmt.Errorf("%s: %w", p, ErrExists)
		}
		return fmt.Errorf("create %s: %w", p, err)
	}
	if err := unix.Fsync(dfd); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
