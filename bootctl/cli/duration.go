package cli

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// parseDuration reads a Go duration ("36h", "90m") or whole days ("7d"),
// the unit expiries are thought in.
func parseDuration(v string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(v, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days < 0 || days > 100000 {
			return 0, fmt.Errorf("%q: not a number of days", v)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	return time.ParseDuration(v)
}

// durationFlag parses into p a duration within lo..hi.
func durationFlag(p *time.Duration, lo, hi time.Duration) func(string) error {
	return func(v string) error {
		d, err := parseDuration(v)
		if err != nil {
			return err
		}
		if d < lo || d > hi {
			return fmt.Errorf("%s: want %v..%v", v, lo, hi)
		}
		*p = d
		return nil
	}
}
