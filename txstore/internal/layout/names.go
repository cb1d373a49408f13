package layout

// Names of the store's directory and of its trees, for packages that
// txstore imports and so cannot import txstore (etcstate): txstore.DirName
// is DirName (a test in etcstate checks that they agree).
const (
	DirName  = ".txboot" // the store directory under a system root
	TreesDir = "trees"   // STORE/trees/<id>: a tx's usr/ and etc/
)
