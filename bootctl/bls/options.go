package bls

import (
	"errors"
	"fmt"
	"strings"

	"github.com/txboot/txboot/initagent/cmdline"
)

// ErrReservedOption is a user kernel argument that txboot sets itself in
// every entry. The last occurrence of a key wins on the kernel command line
// and the user's options come last, so one such argument would override
// txboot's own in every entry (txboot.tx=3 boots tx 3 from all of them).
var ErrReservedOption = errors.New("kernel argument reserved for txboot")

// reservedKey says why key may not appear in the user's options, or "".
// rd.txboot.shell and rd.txboot.debug are the user's debug switches and are
// allowed.
func reservedKey(key string) string {
	switch {
	case key == "root":
		return "set it with --root-arg"
	case key == "initrd":
		return "txboot adds each tx's own initrd"
	case key == "txboot.tx" || key == "txboot.digest" || key == "txboot.image":
		return "txboot sets it for each entry"
	case key == "txboot.force":
		return "it would boot every entry even when bad or out of tries; add it in the boot menu for one boot"
	case key == "txboot.verify" || key == "txboot.timeout" || key == "txboot.watchdog":
		// Boot policy, the same for every entry: the user's choice.
		return ""
	case strings.HasPrefix(key, "txboot.") || key == "txboot":
		return "unknown txboot key (known: txboot.verify, txboot.timeout, txboot.watchdog)"
	}
	return ""
}

// CheckOptions rejects user kernel arguments that would override the ones
// txboot writes into each entry: root=, initrd=, txboot.tx, txboot.digest,
// txboot.image and txboot.force (and unknown txboot.* keys, likely typos). Tokens are
// split as the kernel (and initagent) split them, quotes included; what
// follows a bare "--" belongs to init and is not checked.
func CheckOptions(options string) error {
	params, _ := cmdline.Split(options)
	for _, p := range params {
		if why := reservedKey(p.Key); why != "" {
			return fmt.Errorf("%w: %q in the options: %s", ErrReservedOption, p.String(), why)
		}
	}
	return nil
}

// StripReservedOptions returns options without the arguments CheckOptions
// rejects, and those arguments: for settings saved before the check
// existed.
func StripReservedOptions(options string) (kept string, dropped []string) {
	var keep []string
	rest := options
	for {
		rest = strings.TrimLeft(rest, " \t\n\v\f\r")
		if rest == "" {
			break
		}
		if strings.HasPrefix(rest, "--") && (len(rest) == 2 || strings.ContainsRune(" \t\n\v\f\r", rune(rest[2]))) {
			keep = append(keep, rest) // init's arguments: kept as given
			break
		}
		params, _ := cmdline.Split(rest)
		tok := rawToken(rest)
		rest = rest[len(tok):]
		if len(params) > 0 && reservedKey(params[0].Key) != "" {
			dropped = append(dropped, tok)
			continue
		}
		keep = append(keep, tok)
	}
	return strings.Join(keep, " "), dropped
}

// rawToken is the first token of s as the kernel splits it: up to unquoted
// whitespace, double quotes toggling.
func rawToken(s string) string {
	in := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"':
			in = !in
		case !in && (c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r' || c == 0):
			return s[:i]
		}
	}
	return s
}
