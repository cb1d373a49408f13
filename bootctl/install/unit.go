package install

import (
	"fmt"
	"path"
	"strings"
)

// link is one symlink `systemctl enable` would make for a unit: dir (below
// ROOT) holds a link named after the unit, pointing at the unit file.
type link struct {
	dir string
}

// enableLinks reads the [Install] section of unit the way systemctl enable
// does for WantedBy=, RequiredBy= and UpheldBy=: space-separated unit
// names, an empty value resetting the list, backslash continuations.
// Enabling must happen offline (systemctl may not run on the target), and
// the unit's own section decides where it hooks in.
func enableLinks(unit []byte, name string) ([]link, error) {
	suffix := map[string]string{"WantedBy": ".wants", "RequiredBy": ".requires", "UpheldBy": ".upholds"}
	lists := map[string][]string{}
	var section string
	lines := strings.Split(strings.ReplaceAll(string(unit), "\r\n", "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		for strings.HasSuffix(line, "\\") && i+1 < len(lines) {
			i++
			line = strings.TrimSuffix(line, "\\") + " " + strings.TrimSpace(lines[i])
		}
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			section = strings.Trim(line, "[]")
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if !ok || section != "Install" || suffix[k] == "" {
			continue
		}
		if strings.TrimSpace(v) == "" {
			lists[k] = nil
			continue
		}
		lists[k] = append(lists[k], strings.Fields(v)...)
	}
	var out []link
	seen := map[string]bool{}
	for _, k := range []string{"RequiredBy", "WantedBy", "UpheldBy"} {
		for _, target := range lists[k] {
			if target == "" || strings.ContainsAny(target, "/\\") || target[0] == '.' || !strings.Contains(target, ".") {
				return nil, fmt.Errorf("unit %s: [Install] %s=%q is not a unit name", name, k, target)
			}
			dir := path.Join("etc/systemd/system", target+suffix[k])
			if !seen[dir] {
				seen[dir] = true
				out = append(out, link{dir: dir})
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("unit %s: no WantedBy=, RequiredBy= or UpheldBy= in [Install]: nothing would start it", name)
	}
	return out, nil
}
