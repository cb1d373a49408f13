// Package cmdline parses the kernel command line for initagent.
//
// It is a pure function over a string: it never reads /proc/cmdline itself,
// never returns an error and never panics. A bad value yields a Warning and a
// safe default, because PID 1 must keep booting (or fall back) whatever the
// bootloader handed it.
//
// Rules that apply to every key:
//
//   - Tokenisation follows the kernel (lib/cmdline.c next_arg): tokens are
//     separated by unquoted ASCII whitespace; double quotes group, and one
//     pair of quotes around a value (foo="a b") or a whole token
//     ("foo=a b") is removed.
//   - The last occurrence of a key decides. A bad last occurrence gives the
//     default, not an earlier good value, so the result never depends on
//     text the user may think they overrode.
//   - Everything after a bare "--" belongs to init and lands in InitArgs.
//   - Keys are matched exactly (case-sensitive), like dracut.
package cmdline

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Defaults and limits for the root device wait (txboot.timeout=).
const (
	DefaultRootTimeout = 30 * time.Second
	MinRootTimeout     = 1 * time.Second
	MaxRootTimeout     = 600 * time.Second
	// MaxRootDelay bounds rootdelay=, so a typo cannot stall PID 1 for hours.
	MaxRootDelay = 600 * time.Second
)

// Defaults and limits for txboot.watchdog= (0 = don't arm).
const (
	DefaultWatchdog = 120 * time.Second
	MaxWatchdog     = 3600 * time.Second
)

// RootKind says how root= names the device.
type RootKind int

// Root device kinds. RootNone means root= was absent or invalid.
const (
	RootNone RootKind = iota
	RootPath
	RootUUID
	RootLabel
	RootPartUUID
	RootPartLabel
)

func (k RootKind) String() string {
	switch k {
	case RootNone:
		return "none"
	case RootPath:
		return "path"
	case RootUUID:
		return "UUID"
	case RootLabel:
		return "LABEL"
	case RootPartUUID:
		return "PARTUUID"
	case RootPartLabel:
		return "PARTLABEL"
	}
	return fmt.Sprintf("RootKind(%d)", int(k))
}

// RootSpec is a parsed root=. UUID and PARTUUID values are lowercased;
// LABEL and PARTLABEL values are kept as given (labels are case-sensitive).
type RootSpec struct {
	Kind  RootKind
	Value string
}

// IsZero reports whether no usable root= was given.
func (r RootSpec) IsZero() bool { return r.Kind == RootNone }

// String gives the root= form, e.g. "UUID=…" or "/dev/vda1".
func (r RootSpec) String() string {
	switch r.Kind {
	case RootNone:
		return ""
	case RootPath:
		return r.Value
	}
	return r.Kind.String() + "=" + r.Value
}

// VerifyMode is txboot.verify=.
type VerifyMode string

// Verification modes; see docs/design.md.
const (
	VerifyFast VerifyMode = "fast"
	VerifyFull VerifyMode = "full"
	VerifyOff  VerifyMode = "off"
)

// Param is one key[=value] token that Parse did not consume.
type Param struct {
	Key      string
	Value    string
	HasValue bool
}

// String gives the token back in key or key=value form (unquoted).
func (p Param) String() string {
	if !p.HasValue {
		return p.Key
	}
	return p.Key + "=" + p.Value
}

// Warning describes a value Parse could not use.
type Warning struct {
	Key   string
	Value string
	Msg   string
}

func (w Warning) String() string {
	return fmt.Sprintf("%s=%q: %s", w.Key, w.Value, w.Msg)
}

// Config is the parsed command line. The zero value is not the default; use
// the result of Parse (Parse("") gives the defaults).
type Config struct {
	// Root is the raw last root= value, even when it could not be parsed.
	Root string
	// RootSpec is Root parsed; Kind is RootNone if absent or invalid.
	RootSpec   RootSpec
	RootFSType string
	RootFlags  string
	// ReadOnly is true unless "rw" is given (last of ro/rw wins). This is
	// the kernel's own default (root_mountflags = MS_RDONLY); the real init
	// remounts rw from fstab.
	ReadOnly bool
	// Init is init= (absolute path) or "" for initagent's default.
	Init     string
	InitArgs []string
	Quiet    bool

	// RootDelay is rootdelay= (seconds, 0..MaxRootDelay, default 0): a
	// pause before the first look for the root device.
	RootDelay time.Duration
	// RootTimeout is txboot.timeout= (seconds), the longest wait for the
	// root device: 1..600 s, default 30 s.
	RootTimeout time.Duration
	// Watchdog is txboot.watchdog= (seconds, 0..MaxWatchdog): the hardware
	// watchdog timeout for a tx on trial; 0 means don't arm it.
	Watchdog time.Duration

	// Tx is txboot.tx= (>0), or 0 for the store's default.
	Tx uint64
	// Digest is txboot.digest= normalised to "sha256:<64 lowercase hex>",
	// or "" when absent or invalid.
	Digest string
	// DigestInvalid is true when the last txboot.digest= was present but
	// malformed. The digest pins content chosen by the bootloader entry, so
	// a garbled pin must not degrade into "no pin": the boot logic must
	// reject the requested tx (and fall back) when this is set.
	DigestInvalid bool
	// Image is txboot.image=, the fs-verity digest of the tx's sealed
	// image, normalised like Digest; "" when absent or invalid.
	Image string
	// ImageInvalid is true when the last txboot.image= was present but
	// malformed: as with DigestInvalid, a garbled pin is not "no pin", and
	// the requested tx is refused.
	ImageInvalid bool
	// Verify is txboot.verify=, always one of the three modes (default fast).
	Verify VerifyMode
	// Force is txboot.force: boot the requested tx even if marked bad.
	Force bool
	// Shell is rd.txboot.shell: rescue shell on failure.
	Shell bool
	// Debug is rd.txboot.debug: verbose log.
	Debug bool

	// Unknown holds every token Parse did not consume, in order, so it can
	// be passed on (e.g. module parameters, systemd.* keys).
	Unknown []Param
}

// defaults gives the Config for an empty command line.
func defaults() Config {
	return Config{
		ReadOnly:    true,
		RootTimeout: DefaultRootTimeout,
		Watchdog:    DefaultWatchdog,
		Verify:      VerifyFast,
	}
}

// Parse parses a kernel command line. It never fails: unusable values give
// a Warning and the key's default.
func Parse(s string) (Config, []Warning) {
	c := defaults()
	var ws []Warning
	warn := func(p Param, format string, args ...any) {
		ws = append(ws, Warning{Key: p.Key, Value: p.Value, Msg: fmt.Sprintf(format, args...)})
	}

	params, initArgs := Split(s)
	c.InitArgs = initArgs
	for _, p := range params {
		switch p.Key {
		case "root":
			c.Root = p.Value
			spec, msg := parseRoot(p.Value)
			c.RootSpec = spec
			if msg != "" {
				warn(p, "%s; root= ignored", msg)
			}
		case "rootfstype":
			c.RootFSType = p.Value
		case "rootflags":
			c.RootFlags = p.Value
		case "ro":
			c.ReadOnly = true
		case "rw":
			c.ReadOnly = false
		case "init":
			c.Init = ""
			switch {
			case p.Value == "":
				warn(p, "empty; using the default init")
			case !strings.HasPrefix(p.Value, "/"):
				warn(p, "not an absolute path; using the default init")
			default:
				c.Init = p.Value
			}
		case "quiet":
			c.Quiet = true
		case "loglevel", "console":
			// The kernel's own; initagent logs through /dev/kmsg, which
			// applies them.
		case "rootwait":
			// Any form (rootwait=N is Linux 6.5+): initagent never waits
			// forever even so, but at most RootTimeout, then falls back
			// or rescues, which is more useful in PID 1 than hanging.
		case "rootdelay":
			c.RootDelay = seconds(p, 0, MaxRootDelay, 0, warn)
		case "txboot.timeout":
			c.RootTimeout = seconds(p, MinRootTimeout, MaxRootTimeout, DefaultRootTimeout, warn)
		case "txboot.watchdog":
			c.Watchdog = seconds(p, 0, MaxWatchdog, DefaultWatchdog, warn)
		case "txboot.tx":
			c.Tx = 0
			n, err := strconv.ParseUint(p.Value, 10, 64)
			if err != nil || n == 0 {
				warn(p, "want a transaction ID > 0; using the default tx")
			} else {
				c.Tx = n
			}
		case "txboot.digest":
			c.Digest, c.DigestInvalid = parsePin(p, "", warn)
		case "txboot.image":
			c.Image, c.ImageInvalid = parsePin(p, " (the image's fs-verity digest)", warn)
		case "txboot.verify":
			c.Verify = VerifyFast
			switch v := VerifyMode(strings.ToLower(p.Value)); v {
			case VerifyFast, VerifyFull, VerifyOff:
				c.Verify = v
			default:
				warn(p, "want fast, full or off; using fast")
			}
		case "txboot.force":
			c.Force = parseBool(p, warn)
		case "rd.txboot.shell":
			c.Shell = parseBool(p, warn)
		case "rd.txboot.debug":
			c.Debug = parseBool(p, warn)
		default:
			if strings.HasPrefix(p.Key, "txboot.") || strings.HasPrefix(p.Key, "rd.txboot.") {
				// Likely a typo of one of ours: say so, but pass it on.
				warn(p, "unknown txboot key; passed through")
			}
			c.Unknown = append(c.Unknown, p)
		}
	}
	return c, ws
}

// BootedTx is the tx a command line boots and the digest it pins, by
// Parse's rules: the last txboot.tx= wins, as the kernel does, and an
// invalid one means the store's default (0); the digest is normalised, ""
// when absent or invalid; nothing after "--" counts. bootctl reads
// /proc/cmdline and entry options with it, so it never disagrees with PID 1.
func BootedTx(s string) (id uint64, digest string) {
	c, _ := Parse(s)
	return c.Tx, c.Digest
}

// seconds parses a whole number of seconds in lo..hi. The range is checked
// on the number itself, before it becomes a Duration: n*time.Second
// overflows int64 for n > 9223372036 and would turn a huge value into a
// negative or tiny wait. Anything else (sign, fraction, unit, out of range)
// is a bad value and gives def, like every other key.
func seconds(p Param, lo, hi, def time.Duration, warn func(Param, string, ...any)) time.Duration {
	n, err := strconv.ParseUint(p.Value, 10, 64)
	if err != nil || !isDigits(p.Value) || n < uint64(lo/time.Second) || n > uint64(hi/time.Second) {
		warn(p, "want whole seconds %d..%d; using %d", lo/time.Second, hi/time.Second, def/time.Second)
		return def
	}
	return time.Duration(n) * time.Second
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// parseBool accepts a bare key as true, and 1/0, true/false, yes/no, on/off.
// Anything else is false: none of these switches is safe to turn on by
// accident.
func parseBool(p Param, warn func(Param, string, ...any)) bool {
	if !p.HasValue {
		return true
	}
	switch strings.ToLower(p.Value) {
	case "1", "true", "yes", "on":
		return true
	case "0", "false", "no", "off":
		return false
	}
	warn(p, "want 1/0, true/false, yes/no; using false")
	return false
}

// parsePin parses a content pin (txboot.digest=, txboot.image=): the
// normalised digest, or "" and invalid (warned about) when malformed.
func parsePin(p Param, what string, warn func(Param, string, ...any)) (pin string, invalid bool) {
	d, ok := parseDigest(p.Value)
	if !ok {
		warn(p, "want sha256:<64 hex digits>%s; the requested tx will be rejected", what)
	}
	return d, !ok
}

// parseDigest normalises "sha256:<hex>" to lowercase and validates it.
func parseDigest(v string) (string, bool) {
	v = strings.ToLower(v)
	hexPart, ok := strings.CutPrefix(v, "sha256:")
	if !ok || len(hexPart) != 64 || !isHex(hexPart) {
		return "", false
	}
	return v, true
}

// parseRoot parses root=. It returns an empty spec and a message when the
// value is unusable.
func parseRoot(v string) (RootSpec, string) {
	kind, val, ok := cutTag(v)
	if !ok {
		switch {
		case v == "":
			return RootSpec{}, "empty"
		case strings.HasPrefix(v, "/dev/"):
			if !validDevPath(v) {
				return RootSpec{}, "not a clean path under /dev/"
			}
			return RootSpec{Kind: RootPath, Value: v}, ""
		}
		return RootSpec{}, "want /dev/…, UUID=, LABEL=, PARTUUID= or PARTLABEL="
	}
	if val == "" {
		return RootSpec{}, "empty " + kind.String()
	}
	switch kind {
	case RootUUID:
		l := strings.ToLower(val)
		if !isUUID(l) && !isFATSerial(l) {
			return RootSpec{}, "malformed UUID"
		}
		val = l
	case RootPartUUID:
		l := strings.ToLower(val)
		if !isUUID(l) && !isMBRPartUUID(l) {
			return RootSpec{}, "malformed PARTUUID (want a GPT UUID or MBR SSSSSSSS-PP)"
		}
		val = l
	}
	if strings.ContainsRune(val, 0) {
		return RootSpec{}, "NUL byte in value"
	}
	return RootSpec{Kind: kind, Value: val}, ""
}

func cutTag(v string) (RootKind, string, bool) {
	for _, t := range []struct {
		prefix string
		kind   RootKind
	}{
		{"UUID=", RootUUID},
		{"LABEL=", RootLabel},
		{"PARTUUID=", RootPartUUID},
		{"PARTLABEL=", RootPartLabel},
	} {
		if rest, ok := strings.CutPrefix(v, t.prefix); ok {
			return t.kind, rest, true
		}
	}
	return RootNone, "", false
}

// validDevPath accepts /dev/<name>[/<name>…] without ".", "..", empty
// elements or NUL, so the path cannot leave /dev.
func validDevPath(p string) bool {
	rest := strings.TrimPrefix(p, "/dev/")
	if rest == "" || strings.ContainsRune(rest, 0) {
		return false
	}
	for _, e := range strings.Split(rest, "/") {
		if e == "" || e == "." || e == ".." {
			return false
		}
	}
	return true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// hexGroups checks lowercase s against dash-separated hex group lengths.
func hexGroups(s string, lens ...int) bool {
	parts := strings.Split(s, "-")
	if len(parts) != len(lens) {
		return false
	}
	for i, p := range parts {
		if len(p) != lens[i] || !isHex(p) {
			return false
		}
	}
	return true
}

// isUUID: 8-4-4-4-12 hex digits (ext4, xfs, btrfs, GPT).
func isUUID(s string) bool { return hexGroups(s, 8, 4, 4, 4, 12) }

// isFATSerial: XXXX-XXXX, the volume serial blkid reports as a FAT UUID.
func isFATSerial(s string) bool { return hexGroups(s, 4, 4) }

// isMBRPartUUID: SSSSSSSS-PP, the kernel's PARTUUID for MBR partitions.
func isMBRPartUUID(s string) bool { return hexGroups(s, 8, 2) }

// Split tokenises a command line like the kernel's next_arg: it returns the
// parameters before a bare "--" and the words after it (for init).
func Split(s string) (params []Param, initArgs []string) {
	for {
		s = skipSpace(s)
		if s == "" {
			return params, initArgs
		}
		var p Param
		p, s = nextArg(s)
		if !p.HasValue && p.Key == "--" {
			for {
				s = skipSpace(s)
				if s == "" {
					return params, initArgs
				}
				var a Param
				a, s = nextArg(s)
				initArgs = append(initArgs, a.String())
			}
		}
		params = append(params, p)
	}
}

// isSpace is the kernel's isspace for ASCII, plus NUL so that a stray
// terminator cannot glue tokens together.
func isSpace(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\v', '\f', '\r', 0:
		return true
	}
	return false
}

func skipSpace(s string) string {
	i := 0
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	return s[i:]
}

// nextArg mirrors lib/cmdline.c next_arg, quirks included. s starts with a
// non-space byte.
func nextArg(s string) (Param, string) {
	quoted := false
	if s[0] == '"' {
		s = s[1:]
		quoted = true
	}
	inQuote := quoted
	// As in the kernel, 0 means "no '=' yet": a leading '=' is part of the key.
	equals := 0
	i := 0
	for ; i < len(s); i++ {
		c := s[i]
		if isSpace(c) && !inQuote {
			break
		}
		if equals == 0 && c == '=' {
			equals = i
		}
		if c == '"' {
			inQuote = !inQuote
		}
	}
	tok, rest := s[:i], s[i:]
	last := -1 // index of a closing quote the kernel overwrites with NUL
	if i > 0 && tok[i-1] == '"' {
		last = i - 1
	}
	if equals == 0 {
		if quoted && last >= 0 {
			tok = tok[:last]
		}
		return Param{Key: tok}, rest
	}
	vs, ve := equals+1, i
	if vs < i && tok[vs] == '"' {
		vs++
		if last >= 0 {
			ve = last
		}
	}
	if quoted && last >= 0 {
		ve = last
	}
	if ve < vs {
		ve = vs
	}
	return Param{Key: tok[:equals], Value: tok[vs:ve], HasValue: true}, rest
}
