package cli

import (
	"crypto/ed25519"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/repo"
	"github.com/txboot/txboot/txstore/sign"
)

// certifyOpts are certify's flags and what check makes of them.
type certifyOpts struct {
	repoDir, keyPath string
	online, roots    []string // PEM files
	revoke           []string // key IDs or PEM files
	expires          time.Duration
	o                repo.CertifyOptions // by check
}

func certifyVerb() *verb {
	c := &certifyOpts{}
	return &verb{name: "certify", args: "--repo DIR --key ROOT.key [--online PUB.pem …] [--root PUB.pem …] [--revoke KEYID|PUB.pem …] [--expires 90d]",
		help: "sign the repository's next key statement (keys.json) with a root key: certify online signing keys for a time, add root keys, revoke keys for good",
		pos:  posArgs{msg: "certify takes flags only"}, store: storeNone,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&c.repoDir, "repo", "", "repository directory")
			fs.StringVar(&c.keyPath, "key", "", "root private key (PEM) that signs the statement; keep it offline")
			fs.Func("online", "public key (PEM) of an online signing key to certify for --expires; repeatable", appendTo(&c.online))
			fs.Func("root", "public key (PEM) to make a root key (it may sign later statements); repeatable", appendTo(&c.roots))
			fs.Func("revoke", "key ID (32 hex) or public key (PEM) to revoke for good; repeatable", appendTo(&c.revoke))
			fs.Func("expires", "how long --online keys are certified: 7d, 36h, … (default 90d, at most 366d)", durationFlag(&c.expires, time.Hour, repo.MaxExpires))
		},
		check: func(e *env, args []string) error { return c.check() },
		exec: func(e *env, _ *txstore.Store, args []string) error {
			c.o.Timeout = e.timeout
			ks, err := repo.Certify(c.repoDir, c.o)
			if err != nil {
				return err
			}
			if e.json {
				return e.printJSON(ks)
			}
			fmt.Fprintf(e.stdout, "key statement version %d signed by %s in %s\n", ks.Version, sign.KeyID(c.o.Key.Public().(ed25519.PublicKey)), c.repoDir)
			for _, k := range ks.Keys {
				until := "no expiry"
				if !k.Expires.IsZero() {
					until = "until " + k.Expires.Format(time.RFC3339)
				}
				fmt.Fprintf(e.stdout, "  %s %s, %s\n", k.ID, k.Role, until)
			}
			if len(ks.Revoked) > 0 {
				fmt.Fprintf(e.stdout, "  revoked: %s\n", strings.Join(ks.Revoked, ", "))
			}
			return nil
		}}
}

func appendTo(p *[]string) func(string) error {
	return func(v string) error { *p = append(*p, v); return nil }
}

// check reads the keys; it writes nothing.
func (c *certifyOpts) check() error {
	if c.repoDir == "" || c.keyPath == "" {
		return usagef("certify needs --repo DIR and --key ROOT.key")
	}
	if len(c.online)+len(c.roots)+len(c.revoke) == 0 {
		return usagef("certify needs at least one --online, --root or --revoke")
	}
	k, err := sign.LoadPrivateKey(c.keyPath)
	if err != nil {
		return usagef("--key: %v", err)
	}
	c.o = repo.CertifyOptions{Key: k, Expires: c.expires}
	for _, l := range []struct {
		files []string
		into  *[]sign.PublicKey
		flag  string
	}{{c.online, &c.o.Online, "--online"}, {c.roots, &c.o.Root, "--root"}} {
		for _, f := range l.files {
			pub, err := sign.LoadPublicKey(f)
			if err != nil {
				return usagef("%s: %v", l.flag, err)
			}
			*l.into = append(*l.into, pub)
		}
	}
	for _, r := range c.revoke {
		if len(r) == 32 && !strings.ContainsAny(r, "/.") {
			c.o.Revoke = append(c.o.Revoke, r)
			continue
		}
		pub, err := sign.LoadPublicKey(r)
		if err != nil {
			return usagef("--revoke %s: neither a key ID nor a public key: %v", r, err)
		}
		c.o.Revoke = append(c.o.Revoke, pub.ID)
	}
	return nil
}
