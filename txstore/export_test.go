package txstore

import (
	"os"

	"github.com/txboot/txboot/txstore/internal/dbio"
)

// SetOpenDB replaces store.db's opener until the returned func is called.
func SetOpenDB(f func(name string, flag int) (*os.File, error)) (restore func()) {
	old := dbio.OpenFile
	dbio.OpenFile = f
	return func() { dbio.OpenFile = old }
}
