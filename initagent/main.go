// Command initagent is txboot's /init in the initramfs (PID 1): it boots the
// requested /usr transaction, falling back to an older good one. The flow
// lives in package boot; see initagent/boot/flow.go.
package main

import "github.com/txboot/txboot/initagent/boot"

func main() { boot.Main() }
