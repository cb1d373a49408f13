package boot

import (
	"fmt"
	"io"
	"strings"
)

// klog writes to /dev/kmsg with a "txboot:" prefix so messages land in the
// kernel log (and on the console, by the kernel's loglevel rules, which is
// how quiet and loglevel= are honoured). Until the kernel log is attached
// (System.OpenKmsg), lines go to the console.
type klog struct {
	kmsg  io.Writer // nil: not attached yet
	con   io.Writer
	debug bool // rd.txboot.debug; quiet needs nothing here, the kernel's loglevel does it
}

func newKlog(con io.Writer) *klog { return &klog{con: con} }

func (k *klog) logf(level int, format string, args ...any) {
	if level >= 7 && !k.debug {
		return
	}
	if k.debug && level > 5 {
		level = 5 // rd.txboot.debug: make info visible on the console
	}
	msg := fmt.Sprintf(format, args...)
	if k.kmsg == nil {
		fmt.Fprintf(k.con, "txboot: %s\n", msg)
		return
	}
	for _, line := range strings.Split(msg, "\n") {
		// One write per record; kmsg caps records near 1 KiB.
		if len(line) > 900 {
			line = line[:900] + "…"
		}
		fmt.Fprintf(k.kmsg, "<%d>txboot: %s\n", level, line)
	}
}

// console writes straight to the console: rescue instructions must be seen
// even with quiet.
func (k *klog) console(format string, args ...any) {
	fmt.Fprintf(k.con, format, args...)
}
