package modlist

import (
	"slices"
	"testing"
)

func TestCutExt(t *testing.T) {
	tests := []struct {
		in, stem string
		ok       bool
	}{
		{"e1000.ko", "e1000", true},
		{"kernel/drivers/virtio_blk.ko.zst", "kernel/drivers/virtio_blk", true},
		{"a.ko.xz", "a", true},
		{"a.ko.gz", "a", true},
		{".ko", ".ko", false},
		{"a.ko.bz2", "a.ko.bz2", false},
		{"a.zst", "a.zst", false},
		{"a.KO", "a.KO", false},
		{"", "", false},
	}
	for _, tt := range tests {
		if stem, ok := CutExt(tt.in); stem != tt.stem || ok != tt.ok {
			t.Errorf("CutExt(%q) = %q, %v; want %q, %v", tt.in, stem, ok, tt.stem, tt.ok)
		}
	}
	if got := Exts(); !slices.Equal(got, []string{".ko", ".ko.zst", ".ko.xz", ".ko.gz"}) {
		t.Errorf("Exts() = %q", got)
	}
	Exts()[0] = "x"
	Compressions()[0] = "x"
	if Exts()[0] != ".ko" || Compressions()[0] != ".zst" {
		t.Error("Exts and Compressions share their storage with callers")
	}
}
