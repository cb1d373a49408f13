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
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/repo"
	"github.com/txboot/txboot/txstore/sign"
	"golang.org/x/sys/unix"
)

// ErrExists: keygen refuses to overwrite a key file.
var ErrExists = errors.New("file exists (not overwritten)")

// publishOpts are publish's flags and what check makes of them.
type publishOpts struct {
	repoDir, keyPath, version string
	expires                   time.Duration
	ids                       []uint64           // from the arguments, by check
	key                       ed25519.PrivateKey // from keyPath, by check
}

func publishVerb() *verb {
	o := &publishOpts{}
	return &verb{name: "publish", args: "--repo DIR [--key KEY] [--version V] [--expires 7d] [ID ...]",
		help: "write txs (default: the default tx) into the static repository DIR (signed with --key); every publish writes a new index (next sequence, new expiry), so running it again keeps a repository fresh",
		pos:  posArgs{max: -1}, store: storeRead,
		// Signing also writes the signature into the local record.
		writeWhen: func() bool { return o.key != nil },
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&o.repoDir, "repo", "", "repository directory (created when missing)")
			fs.StringVar(&o.keyPath, "key", "", "ed25519 private key (PEM) to sign the index and the txs with")
			fs.StringVar(&o.version, "version", "", "version string of the tx in the index (default: its summary, else tx-ID); one tx only")
			fs.Func("expires", "how long the new index is valid: a duration like 7d, 36h or 90m, 1m..366d (default 7d); devices refuse an expired index", durationFlag(&o.expires, time.Minute, repo.MaxExpires))
		},
		check: func(e *env, args []string) error {
			if o.repoDir == "" {
				return usagef("publish needs --repo DIR")
			}
			for _, a := range args {
				id, err := parseID(a)
				if err != nil {
					return err
				}
				o.ids = append(o.ids, id)
			}
			if o.version != "" {
				if len(o.ids) > 1 {
					return usagef("--version names one tx; %d given", len(o.ids))
				}
				if err := checkText("--version", o.version); err != nil {
					return err
				}
			}
			if o.keyPath != "" {
				k, err := sign.LoadPrivateKey(o.keyPath)
				if err != nil {
					return err
				}
				o.key = k
			}
			return nil
		},
		exec: func(e *env, s *txstore.Store, args []string) error { return publish(e, s, o) }}
}

// publish is the publish verb, after check.
func publish(e *env, s *txstore.Store, o *publishOpts) error {
	ids := o.ids
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
	e.progress("publishing to %s…", o.repoDir)
	st, err := repo.Publish(s, o.repoDir, ids, repo.PublishOptions{Key: o.key, Version: o.version, Timeout: e.timeout, Expires: o.expires})
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
		if t.ImageSigned {
			what += ", image signature added"
		}
		fmt.Fprintf(e.stdout, "tx %d %s %q: %s\n", t.ID, t.Digest, printable(t.Version), what)
	}
	fmt.Fprintf(e.stdout, "  %d new objects, %s written; %d objects already there (%s skipped)\n",
		st.NewObjects, human(st.BytesWritten), st.SkippedObjects, human(st.BytesSkipped))
	switch {
	case !st.IndexWritten:
		fmt.Fprintf(e.stdout, "  index unchanged; %s\n", ms(st.Duration))
	case st.IndexSigned:
		fmt.Fprintf(e.stdout, "  index sequence %d written and signed, valid until %s; %s\n", st.Sequence, st.Expires.Format(time.RFC3339), ms(st.Duration))
	default:
		fmt.Fprintf(e.stdout, "  index sequence %d written (unsigned), valid until %s; %s\n", st.Sequence, st.Expires.Format(time.RFC3339), ms(st.Duration))
	}
	return nil
}

func keygenVerb() *verb {
	var out string
	return &verb{name: "keygen", args: "--out PREFIX",
		help: "make an ed25519 signing key: PREFIX.key (private, 0600) and PREFIX.pem (public)",
		pos:  posArgs{msg: "keygen takes --out PREFIX and no arguments"}, store: storeNone,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&out, "out", "", "path prefix of the two files")
		},
		check: func(e *env, args []string) error {
			if out == "" {
				return usagef("keygen takes --out PREFIX and no arguments")
			}
			// --out is a prefix: a directory would get hidden ".key" and
			// ".pem" files, or (for a missing one) a confusing error.
			fi, err := os.Stat(out)
			if os.IsPathSeparator(out[len(out)-1]) || err == nil && fi.IsDir() {
				ex := filepath.Join(out, "vendor")
				return usagef("--out %s is a directory: --out is a path prefix (--out %s writes %s.key and %s.pem)", out, ex, ex, ex)
			}
			return nil
		},
		exec: func(e *env, _ *txstore.Store, args []string) error { return keygen(e, out) }}
}

// keygen writes PREFIX.key and PREFIX.pem, neither of which may exist.
func keygen(e *env, out string) error {
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
