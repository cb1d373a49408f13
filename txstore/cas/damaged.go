package cas

import "errors"

// ErrDamaged reports something in the store that is not what its layout
// says: a symlink or other non-directory where a directory belongs, or an
// object that is not a regular file with its name's mode, owner and the
// expected size. Whatever it is, it is left alone: never followed, never
// removed, never reused.
var ErrDamaged = errors.New("damaged store")
