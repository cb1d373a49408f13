package txstore

import "os"

// SetOpenDB replaces store.db's opener until the returned func is called.
func SetOpenDB(f func(name string, flag int) (*os.File, error)) (restore func()) {
	old := openDBFile
	openDBFile = f
	return func() { openDBFile = old }
}
