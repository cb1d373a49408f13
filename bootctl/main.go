// Command bootctl manages txboot transactions: commit, list, verify, prune,
// boot assessment and bootloader entries. See `bootctl help`.
package main

import (
	"os"

	"github.com/txboot/txboot/bootctl/cli"
	"github.com/txboot/txboot/bootctl/run"
)

func main() {
	// bootctl run starts bootctl again inside its namespaces.
	if len(os.Args) == 2 && os.Args[1] == run.ChildArg {
		os.Exit(run.Child())
	}
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
