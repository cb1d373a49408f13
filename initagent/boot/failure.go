package boot

import (
	"errors"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/blit"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/manifest"
)

// Store is what Choose needs of the store: records, the default, verify and
// re-blit. *txstore.Store implements it; unit tests use a fake.
type Store interface {
	Default() (uint64, error)
	SetDefault(id uint64) error
	List() ([]*txstore.Tx, error)
	Update(id uint64, ev txstore.Event, fn func(*txstore.Tx) error) (*txstore.Tx, error)
	TreeDir(id uint64) string
	Verify(id uint64, mode txstore.VerifyMode) ([]txstore.Problem, error)
	Reblit(id uint64) (blit.Stats, error)
	// ImagePath and ObjectsDir are what a sealed /usr is mounted from.
	ImagePath(id uint64) string
	ObjectsDir() string
	// FindManifest and VerifyManifest boot without the database.
	FindManifest(digest string, hint uint64) (*manifest.Manifest, cas.Key, error)
	VerifyManifest(id uint64, m *manifest.Manifest, mode txstore.VerifyMode) ([]txstore.Problem, error)
}

var _ Store = (*txstore.Store)(nil)

// Why a tx was not booted, for errors.Is on a Failure's Err and on Choose's
// error. A refusal by the boot state matches bootstate.ErrBad or
// bootstate.ErrOutOfTries instead.
var (
	ErrNotInStore   = errors.New("tx not in the store")
	ErrDigestPin    = errors.New("content pin not met") // txboot.digest= mismatched, malformed or missing
	ErrVerify       = errors.New("verification could not run")
	ErrDamaged      = errors.New("tree damaged") // verify found problems a re-blit did not repair
	ErrAssemble     = errors.New("assembling /usr failed")
	ErrNoInit       = errors.New("no init in the tx")
	ErrNotRecorded  = errors.New("boot attempt not recorded")
	ErrUnsigned     = errors.New("not signed by a trusted key")       // FailUnsigned
	ErrBadSignature = errors.New("trusted signature does not verify") // FailBadSignature
	ErrNoSignatures = errors.New("signatures unreadable without the database")
)

// failErr is a failure whose message is the reason shown to the user and
// which matches its causes with errors.Is.
type failErr struct {
	reason string
	causes []error
}

func (e *failErr) Error() string   { return e.reason }
func (e *failErr) Unwrap() []error { return e.causes }

// fail is the error for reason, matching each non-nil cause.
func fail(reason string, causes ...error) error {
	e := &failErr{reason: reason}
	for _, c := range causes {
		if c != nil {
			e.causes = append(e.causes, c)
		}
	}
	return e
}

// NothingBootableError is Choose's error when no tx could be booted. It
// matches ErrNothingBootable and the Err of every failure.
type NothingBootableError struct {
	msg      string
	Failures []Failure
}

func (e *NothingBootableError) Error() string { return e.msg }

func (e *NothingBootableError) Unwrap() []error {
	errs := []error{ErrNothingBootable}
	for _, f := range e.Failures {
		if f.Err != nil {
			errs = append(errs, f.Err)
		}
	}
	return errs
}

func nothingBootable(res *Result, detail string) error {
	return &NothingBootableError{msg: ErrNothingBootable.Error() + ": " + detail, Failures: res.Failures}
}

// addFailure records err as tx's failure.
func (res *Result) addFailure(tx uint64, err error, kind FailureKind) {
	res.Failures = append(res.Failures, Failure{Tx: tx, Reason: err.Error(), Kind: kind, Err: err})
}
