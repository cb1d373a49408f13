package bls

import (
	"fmt"
	"testing"
)

// The entries follow the same rule as prune (bootstate.Keep): the newest
// good tx, the default and pinned ones, then the newest Keep with bad txs
// after the others.
func TestSelectTxsSharesPruneRule(t *testing.T) {
	txs := []TxInfo{{ID: 1, Good: true}, {ID: 2}, {ID: 3, Bad: true}, {ID: 4}}
	cases := []struct {
		keep int
		def  uint64
		want string
	}{
		{2, 4, "[1 2 4]"}, // not 3: bad, while 2 is untested
		{1, 4, "[1 4]"},
		{4, 4, "[1 2 3 4]"},
		{1, 3, "[1 3 4]"}, // a bad default keeps its entry
	}
	for _, c := range cases {
		got, err := selectTxs(SyncConfig{Keep: c.keep, Default: c.def}, txs)
		if err != nil {
			t.Fatal(err)
		}
		var ids []uint64
		for _, x := range got {
			ids = append(ids, x.ID)
		}
		if fmt.Sprint(ids) != c.want {
			t.Errorf("keep %d default %d: entries for %v, want %s", c.keep, c.def, ids, c.want)
		}
	}
}
