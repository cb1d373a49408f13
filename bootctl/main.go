// Command bootctl manages txboot transactions: commit, list, verify, prune,
// boot assessment and bootloader entries. See `bootctl help`.
package main

import (
	"os"

	"github.com/txboot/txboot/bootctl/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr)) }
