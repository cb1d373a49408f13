package cli

import (
	"flag"
	"fmt"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
)

func verifyVerb() *verb {
	var full bool
	return &verb{name: "verify", args: "[ID] [--full]", help: "check trees against manifests, and signatures against the system's trust store (all txs without ID)",
		pos: posArgs{max: 1, msg: "verify takes at most one id"}, store: storeRead,
		// One command: an object shared by several txs is re-hashed once.
		openOpts: func(o *txstore.Options) { o.HashOnce = true },
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&full, "full", false, "re-hash every object (slow, reads all content)")
		},
		exec: func(e *env, s *txstore.Store, args []string) error {
			ids, err := verifyIDs(s, args)
			if err != nil {
				return err
			}
			mode := txstore.VerifyFast
			if full {
				mode = txstore.VerifyFull
			}
			v := &verifier{e: e, s: s, mode: mode}
			results, bad, err := v.all(ids)
			if err != nil {
				return err
			}
			if e.json {
				if err := e.printJSON(results); err != nil {
					return err
				}
			} else {
				printVerify(e, s, results)
			}
			if bad > 0 {
				return exitError{ExitProblems, fmt.Sprintf("%d of %d transaction(s) failed verification", bad, len(ids))}
			}
			return nil
		}}
}

// verifyIDs is the tx named, or every tx.
func verifyIDs(s *txstore.Store, args []string) ([]uint64, error) {
	if len(args) == 1 {
		id, err := parseID(args[0])
		if err != nil {
			return nil, err
		}
		return []uint64{id}, nil
	}
	txs, err := s.List()
	if err != nil {
		return nil, err
	}
	ids := make([]uint64, 0, len(txs))
	for _, t := range txs {
		ids = append(ids, t.ID)
	}
	return ids, nil
}

// verifyResult is one tx's line in verify's output (and its JSON).
type verifyResult struct {
	ID       uint64            `json:"id"`
	OK       bool              `json:"ok"`
	Problems []txstore.Problem `json:"problems"`
	Millis   int64             `json:"ms"`
	// Signature: unsigned, valid, untrusted or bad against the system's
	// trust store (as in status); bad is a problem.
	Signature string `json:"signature"`
	SignedBy  string `json:"signed_by,omitempty"`
	// Image is the tx's image digest ("": none); ImageSignature and
	// ImageSignedBy judge its image signatures as Signature does the
	// tx's (unsigned without an image).
	Image          string `json:"image,omitempty"`
	ImageSignature string `json:"image_signature"`
	ImageSignedBy  string `json:"image_signed_by,omitempty"`
	note           string // imageNote, for the text output
}

// verifier checks txs one by one, loading the trust store once, and only
// when a tx is signed.
type verifier struct {
	e       *env
	s       *txstore.Store
	mode    txstore.VerifyMode
	trusted []sign.PublicKey
	loaded  bool
}

func (v *verifier) all(ids []uint64) (results []verifyResult, bad int, err error) {
	defer v.e.progressDone()
	for _, id := range ids {
		v.e.progress("verifying tx %d…", id)
		r, err := v.one(id)
		if err != nil {
			return nil, 0, err
		}
		results = append(results, r)
		if !r.OK {
			bad++
		}
	}
	return results, bad, nil
}

func (v *verifier) one(id uint64) (verifyResult, error) {
	start := time.Now()
	probs, err := v.s.Verify(id, v.mode)
	if err != nil {
		return verifyResult{}, err
	}
	r := verifyResult{ID: id, Problems: probs, Signature: sigUnsigned}
	t, err := v.s.Get(id)
	if err != nil {
		return verifyResult{}, err
	}
	if err := v.signatures(&r, t); err != nil {
		return verifyResult{}, err
	}
	r.OK, r.Millis = len(r.Problems) == 0, time.Since(start).Milliseconds()
	if r.Problems == nil {
		r.Problems = []txstore.Problem{}
	}
	return r, nil
}

// signatures judges t's tx and image signatures against the system's
// trust store into r; a trusted key's signature that does not verify is
// a problem.
func (v *verifier) signatures(r *verifyResult, t *txstore.Tx) error {
	r.Image, r.ImageSignature = t.Image, sigUnsigned
	if len(t.Signatures) == 0 && len(t.ImageSignatures) == 0 {
		r.note = imageNote(t, sigUnsigned, "")
		return nil
	}
	// The keys every initrd carries, never the tx's own.
	if !v.loaded {
		ts, err := systemTrust(v.e, v.s)
		if err != nil {
			return fmt.Errorf("check signatures: %w", err)
		}
		v.trusted, v.loaded = ts.Keys, true
	}
	r.Signature, r.SignedBy = signatureState(v.trusted, t)
	if r.Signature == sigBad {
		_, verr := sign.VerifyTx(v.trusted, t.Digest, t.Signatures)
		r.Problems = append(r.Problems, txstore.Problem{Path: signatureProblem, Reason: verr.Error()})
	}
	r.ImageSignature, r.ImageSignedBy = imageSignatureState(v.trusted, t)
	if r.ImageSignature == sigBad {
		_, verr := sign.VerifyImage(v.trusted, t.Digest, t.Image, t.ImageSignatures)
		r.Problems = append(r.Problems, txstore.Problem{Path: signatureProblem, Reason: verr.Error()})
	}
	r.note = imageNote(t, r.ImageSignature, r.ImageSignedBy)
	return nil
}

// printVerify is verify's text output: a line a tx, a line a problem.
func printVerify(e *env, s *txstore.Store, results []verifyResult) {
	for _, r := range results {
		if r.OK {
			note := signedNote(r.Signature, r.SignedBy)
			if r.note != "" {
				note += ", " + r.note
			}
			fmt.Fprintf(e.stdout, "tx %d: ok (%d ms%s)\n", r.ID, r.Millis, note)
			continue
		}
		fmt.Fprintf(e.stdout, "tx %d: %d problem(s)\n", r.ID, len(r.Problems))
		for _, p := range r.Problems {
			switch p.Path {
			case txstore.ManifestProblem: // not a path in the tree
				fmt.Fprintf(e.stdout, "  %s: %s\n", manifestName(s, r.ID), printable(p.Reason))
			case signatureProblem:
				fmt.Fprintf(e.stdout, "  %s\n", printable(p.String()))
			default:
				fmt.Fprintf(e.stdout, "  %s/trees/%d/%s\n", s.Dir, r.ID, printable(p.String()))
			}
		}
	}
}
