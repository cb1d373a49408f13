package testkit

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// moduleRoot is the directory holding go.mod above this package.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			t.Fatalf("no go.mod above %s", dir)
		}
	}
}

// TestEverySkipGoesThroughTestkit keeps the CI rule in one place: outside
// this package no Go file calls Skip, Skipf or SkipNow on a test, nor reads
// $CI itself.
func TestEverySkipGoesThroughTestkit(t *testing.T) {
	root := moduleRoot(t)
	self, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var bad []string
	files := 0
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); p != root && (strings.HasPrefix(n, ".") || n == "testdata" || n == "bin") || p == self {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil // someone is mid-edit; the build reports it
		}
		files++
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			pkg, _ := sel.X.(*ast.Ident)
			switch {
			case (sel.Sel.Name == "Skip" || sel.Sel.Name == "Skipf" || sel.Sel.Name == "SkipNow") && (pkg == nil || pkg.Name != "testkit"):
				bad = append(bad, fset.Position(call.Pos()).String()+": "+sel.Sel.Name+" (use testkit.Skip)")
			case sel.Sel.Name == "Getenv" && pkg != nil && pkg.Name == "os" && len(call.Args) == 1:
				if lit, ok := call.Args[0].(*ast.BasicLit); ok {
					if v, _ := strconv.Unquote(lit.Value); v == CIEnv {
						bad = append(bad, fset.Position(call.Pos()).String()+": os.Getenv(\"CI\") (use testkit.IsCI)")
					}
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 50 {
		t.Fatalf("walked only %d Go files under %s: the walk is broken", files, root)
	}
	for _, b := range bad {
		t.Error(b)
	}
}
