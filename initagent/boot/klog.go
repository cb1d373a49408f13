package boot

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// klog writes to /dev/kmsg with a "txboot:" prefix so messages land in the
// kernel log (and on the console, by the kernel's loglevel rules, which is
// how quiet and loglevel= are honoured).
type klog struct {
	kmsg  *os.File
	quiet bool
	debug bool
}

func newKlog() *klog { return &klog{} }

// open attaches /dev/kmsg and, if the kernel could not give PID 1 a console
// (no /dev/console in the initramfs), opens one for fds 0-2.
func (k *klog) open() {
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		k.kmsg = f
	}
	if _, err := unix.FcntlInt(0, unix.F_GETFD, 0); err != nil {
		if fd, err := unix.Open("/dev/console", unix.O_RDWR, 0); err == nil {
			for i := 0; i < 3; i++ {
				unix.Dup2(fd, i)
			}
			if fd > 2 {
				unix.Close(fd)
			}
		}
	}
}

func (k *klog) logf(level int, format string, args ...any) {
	if level >= 7 && !k.debug {
		return
	}
	if k.debug && level > 5 {
		level = 5 // rd.txboot.debug: make info visible on the console
	}
	msg := fmt.Sprintf(format, args...)
	if k.kmsg == nil {
		fmt.Fprintf(os.Stderr, "txboot: %s\n", msg)
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
	fmt.Fprintf(os.Stdout, format, args...)
}
