package manifest

import "strings"

// Kinds of a FileChange.
const (
	Added   = "added"
	Removed = "removed"
	Changed = "changed"
)

// FileChange is one path that differs between two manifests.
type FileChange struct {
	Path string `json:"path"` // as in the manifest ("." is the root)
	Kind string `json:"kind"` // Added, Removed or Changed
	// What changed, for Changed: the words "type", "content", "target",
	// "mode", "owner", "xattrs", comma-separated in that order. "type"
	// comes alone: the other aspects do not compare across types.
	What string `json:"what,omitempty"`
}

// Diff lists the paths whose entries differ from a to b, in canonical
// order. Both must be in canonical order, as Decode and Scan return them;
// it is one merge over the two. Xattrs are compared only when both are v2
// manifests: a v1 manifest says nothing about them.
func Diff(a, b *Manifest) []FileChange {
	xattrs := a.Version != 1 && b.Version != 1
	out := []FileChange{}
	i, j := 0, 0
	for i < len(a.Entries) || j < len(b.Entries) {
		switch {
		case j == len(b.Entries) || (i < len(a.Entries) && Less(a.Entries[i].Path, b.Entries[j].Path)):
			out = append(out, FileChange{Path: a.Entries[i].Path, Kind: Removed})
			i++
		case i == len(a.Entries) || Less(b.Entries[j].Path, a.Entries[i].Path):
			out = append(out, FileChange{Path: b.Entries[j].Path, Kind: Added})
			j++
		default:
			if what := entryDiff(&a.Entries[i], &b.Entries[j], xattrs); what != "" {
				out = append(out, FileChange{Path: a.Entries[i].Path, Kind: Changed, What: what})
			}
			i, j = i+1, j+1
		}
	}
	return out
}

// entryDiff says what differs between two entries of the same path, ""
// when nothing does.
func entryDiff(a, b *Entry, xattrs bool) string {
	if a.Type != b.Type {
		return "type"
	}
	var what []string
	if a.Type == File && (a.Hash != b.Hash || a.Size != b.Size) {
		what = append(what, "content")
	}
	if a.Type == Symlink && a.Target != b.Target {
		what = append(what, "target")
	}
	if a.Type != Symlink && a.Mode != b.Mode {
		what = append(what, "mode")
	}
	if a.UID != b.UID || a.GID != b.GID {
		what = append(what, "owner")
	}
	if xattrs && a.Xattrs != b.Xattrs {
		what = append(what, "xattrs")
	}
	return strings.Join(what, ",")
}
