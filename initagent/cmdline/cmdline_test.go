package cmdline

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

const (
	hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	uuid  = "0b3c5f2e-1d2a-4c3b-9e8f-7a6b5c4d3e2f"
)

// mod returns the defaults with f applied, for compact expectations.
func mod(f func(c *Config)) Config {
	c := defaults()
	if f != nil {
		f(&c)
	}
	return c
}

func TestParse(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		want  Config
		warns []string // keys that must warn, in order
	}{
		{"empty", "", mod(nil), nil},
		{"only spaces", " \t\n ", mod(nil), nil},

		// root=
		{"root dev path", "root=/dev/vda1", mod(func(c *Config) {
			c.Root = "/dev/vda1"
			c.RootSpec = RootSpec{RootPath, "/dev/vda1"}
		}), nil},
		{"root dev subdir", "root=/dev/mapper/vg-root", mod(func(c *Config) {
			c.Root = "/dev/mapper/vg-root"
			c.RootSpec = RootSpec{RootPath, "/dev/mapper/vg-root"}
		}), nil},
		{"root dev escape", "root=/dev/../etc/passwd", mod(func(c *Config) { c.Root = "/dev/../etc/passwd" }), []string{"root"}},
		{"root dev bare", "root=/dev/", mod(func(c *Config) { c.Root = "/dev/" }), []string{"root"}},
		{"root dev double slash", "root=/dev//sda", mod(func(c *Config) { c.Root = "/dev//sda" }), []string{"root"}},
		{"root UUID", "root=UUID=" + uuid, mod(func(c *Config) {
			c.Root = "UUID=" + uuid
			c.RootSpec = RootSpec{RootUUID, uuid}
		}), nil},
		{"root UUID upper", "root=UUID=" + strings.ToUpper(uuid), mod(func(c *Config) {
			c.Root = "UUID=" + strings.ToUpper(uuid)
			c.RootSpec = RootSpec{RootUUID, uuid}
		}), nil},
		{"root UUID FAT serial", "root=UUID=ABCD-1234", mod(func(c *Config) {
			c.Root = "UUID=ABCD-1234"
			c.RootSpec = RootSpec{RootUUID, "abcd-1234"}
		}), nil},
		{"root UUID bad", "root=UUID=not-a-uuid", mod(func(c *Config) { c.Root = "UUID=not-a-uuid" }), []string{"root"}},
		{"root UUID short", "root=UUID=" + uuid[:35], mod(func(c *Config) { c.Root = "UUID=" + uuid[:35] }), []string{"root"}},
		{"root UUID empty", "root=UUID=", mod(func(c *Config) { c.Root = "UUID=" }), []string{"root"}},
		{"root LABEL", "root=LABEL=Root", mod(func(c *Config) {
			c.Root = "LABEL=Root"
			c.RootSpec = RootSpec{RootLabel, "Root"}
		}), nil},
		{"root LABEL quoted spaces", `root="LABEL=my root"`, mod(func(c *Config) {
			c.Root = "LABEL=my root"
			c.RootSpec = RootSpec{RootLabel, "my root"}
		}), nil},
		{"root PARTUUID gpt", "root=PARTUUID=" + strings.ToUpper(uuid), mod(func(c *Config) {
			c.Root = "PARTUUID=" + strings.ToUpper(uuid)
			c.RootSpec = RootSpec{RootPartUUID, uuid}
		}), nil},
		{"root PARTUUID mbr", "root=PARTUUID=1234abcd-02", mod(func(c *Config) {
			c.Root = "PARTUUID=1234abcd-02"
			c.RootSpec = RootSpec{RootPartUUID, "1234abcd-02"}
		}), nil},
		{"root PARTUUID bad", "root=PARTUUID=1234abcd-02/PARTNROFF=1", mod(func(c *Config) {
			c.Root = "PARTUUID=1234abcd-02/PARTNROFF=1"
		}), []string{"root"}},
		{"root PARTLABEL", "root=PARTLABEL=root", mod(func(c *Config) {
			c.Root = "PARTLABEL=root"
			c.RootSpec = RootSpec{RootPartLabel, "root"}
		}), nil},
		{"root unsupported", "root=sda1", mod(func(c *Config) { c.Root = "sda1" }), []string{"root"}},
		{"root lower tag", "root=uuid=" + uuid, mod(func(c *Config) { c.Root = "uuid=" + uuid }), []string{"root"}},
		{"root empty", "root=", mod(nil), []string{"root"}},
		{"root bare", "root", mod(nil), []string{"root"}},
		{"root last wins", "root=/dev/sda1 root=LABEL=x", mod(func(c *Config) {
			c.Root = "LABEL=x"
			c.RootSpec = RootSpec{RootLabel, "x"}
		}), nil},
		{"root bad last clears good", "root=LABEL=x root=bogus", mod(func(c *Config) { c.Root = "bogus" }), []string{"root"}},

		{"rootfstype rootflags", "rootfstype=ext4 rootflags=data=journal,noatime", mod(func(c *Config) {
			c.RootFSType = "ext4"
			c.RootFlags = "data=journal,noatime"
		}), nil},

		// ro/rw
		{"rw", "rw", mod(func(c *Config) { c.ReadOnly = false }), nil},
		{"ro", "ro", mod(nil), nil},
		{"ro then rw", "ro rw", mod(func(c *Config) { c.ReadOnly = false }), nil},
		{"rw then ro", "rw ro", mod(nil), nil},

		// init=
		{"init", "init=/lib/systemd/systemd", mod(func(c *Config) { c.Init = "/lib/systemd/systemd" }), nil},
		{"init relative", "init=bin/sh", mod(nil), []string{"init"}},
		{"init empty", "init=", mod(nil), []string{"init"}},
		{"init bad last clears", "init=/bin/sh init=sh", mod(nil), []string{"init"}},

		// quiet, loglevel, console
		{"quiet", "quiet", mod(func(c *Config) { c.Quiet = true }), nil},
		// The kernel's loglevel= and console= are consumed, not kept.
		{"loglevel", "loglevel=7", mod(nil), nil},
		{"loglevel word", "loglevel=debug", mod(nil), nil},
		{"console many", "console=tty0 console=ttyS0,115200n8", mod(nil), nil},

		// rootwait, rootdelay, txboot.timeout
		{"rootwait", "rootwait", mod(nil), nil},
		{"rootwait secs", "rootwait=5", mod(nil), nil},
		{"rootdelay", "rootdelay=3", mod(func(c *Config) { c.RootDelay = 3 * time.Second }), nil},
		{"rootdelay bad", "rootdelay=x", mod(nil), []string{"rootdelay"}},
		{"rootdelay neg", "rootdelay=-3", mod(nil), []string{"rootdelay"}},
		{"rootdelay max", "rootdelay=600", mod(func(c *Config) { c.RootDelay = MaxRootDelay }), nil},
		{"rootdelay over max", "rootdelay=601", mod(nil), []string{"rootdelay"}},
		{"rootdelay huge", "rootdelay=100000", mod(nil), []string{"rootdelay"}},
		// n*time.Second would overflow int64 (negative) or wrap (290 ms).
		{"rootdelay overflows negative", "rootdelay=9300000000", mod(nil), []string{"rootdelay"}},
		{"rootdelay wraps", "rootdelay=18446744074", mod(nil), []string{"rootdelay"}},
		{"rootdelay past uint64", "rootdelay=99999999999999999999999", mod(nil), []string{"rootdelay"}},
		{"rootdelay bad last clears good", "rootdelay=3 rootdelay=9300000000", mod(nil), []string{"rootdelay"}},
		{"timeout", "txboot.timeout=90", mod(func(c *Config) { c.RootTimeout = 90 * time.Second }), nil},
		{"timeout min", "txboot.timeout=1", mod(func(c *Config) { c.RootTimeout = MinRootTimeout }), nil},
		{"timeout max", "txboot.timeout=600", mod(func(c *Config) { c.RootTimeout = MaxRootTimeout }), nil},
		{"timeout zero", "txboot.timeout=0", mod(nil), []string{"txboot.timeout"}},
		{"timeout neg", "txboot.timeout=-4", mod(nil), []string{"txboot.timeout"}},
		{"timeout big", "txboot.timeout=601", mod(nil), []string{"txboot.timeout"}},
		{"timeout overflows negative", "txboot.timeout=9300000000", mod(nil), []string{"txboot.timeout"}},
		{"timeout wraps", "txboot.timeout=18446744074", mod(nil), []string{"txboot.timeout"}},
		{"timeout overflow", "txboot.timeout=99999999999999999999999", mod(nil), []string{"txboot.timeout"}},
		{"timeout plus", "txboot.timeout=+5", mod(nil), []string{"txboot.timeout"}},
		{"timeout word", "txboot.timeout=soon", mod(nil), []string{"txboot.timeout"}},
		{"timeout bare", "txboot.timeout", mod(nil), []string{"txboot.timeout"}},

		// txboot.watchdog (0 = don't arm)
		{"watchdog default is 120 s", "", mod(func(c *Config) { c.Watchdog = 120 * time.Second }), nil},
		{"watchdog", "txboot.watchdog=10", mod(func(c *Config) { c.Watchdog = 10 * time.Second }), nil},
		{"watchdog off", "txboot.watchdog=0", mod(func(c *Config) { c.Watchdog = 0 }), nil},
		{"watchdog max", "txboot.watchdog=3600", mod(func(c *Config) { c.Watchdog = MaxWatchdog }), nil},
		{"watchdog over max", "txboot.watchdog=3601", mod(nil), []string{"txboot.watchdog"}},
		{"watchdog neg", "txboot.watchdog=-1", mod(nil), []string{"txboot.watchdog"}},
		{"watchdog word", "txboot.watchdog=off", mod(nil), []string{"txboot.watchdog"}},
		{"watchdog empty", "txboot.watchdog=", mod(nil), []string{"txboot.watchdog"}},
		{"watchdog bare", "txboot.watchdog", mod(nil), []string{"txboot.watchdog"}},
		{"watchdog overflows", "txboot.watchdog=9300000000", mod(nil), []string{"txboot.watchdog"}},
		{"watchdog wraps", "txboot.watchdog=18446744074", mod(nil), []string{"txboot.watchdog"}},
		{"watchdog bad last clears good", "txboot.watchdog=10 txboot.watchdog=x", mod(nil), []string{"txboot.watchdog"}},
		{"watchdog good last wins", "txboot.watchdog=x txboot.watchdog=0", mod(func(c *Config) { c.Watchdog = 0 }), []string{"txboot.watchdog"}},

		// txboot.tx
		{"tx", "txboot.tx=42", mod(func(c *Config) { c.Tx = 42 }), nil},
		{"tx max", "txboot.tx=18446744073709551615", mod(func(c *Config) { c.Tx = 18446744073709551615 }), nil},
		{"tx overflow", "txboot.tx=18446744073709551616", mod(nil), []string{"txboot.tx"}},
		{"tx zero", "txboot.tx=0", mod(nil), []string{"txboot.tx"}},
		{"tx neg", "txboot.tx=-1", mod(nil), []string{"txboot.tx"}},
		{"tx plus", "txboot.tx=+1", mod(nil), []string{"txboot.tx"}},
		{"tx hex", "txboot.tx=0x10", mod(nil), []string{"txboot.tx"}},
		{"tx bad last clears good", "txboot.tx=5 txboot.tx=x", mod(nil), []string{"txboot.tx"}},
		{"tx good last wins", "txboot.tx=x txboot.tx=5", mod(func(c *Config) { c.Tx = 5 }), []string{"txboot.tx"}},

		// txboot.digest
		{"digest", "txboot.digest=sha256:" + hex64, mod(func(c *Config) { c.Digest = "sha256:" + hex64 }), nil},
		{"digest upper", "txboot.digest=SHA256:" + strings.ToUpper(hex64), mod(func(c *Config) { c.Digest = "sha256:" + hex64 }), nil},
		{"digest short", "txboot.digest=sha256:" + hex64[1:], mod(func(c *Config) { c.DigestInvalid = true }), []string{"txboot.digest"}},
		{"digest no algo", "txboot.digest=" + hex64, mod(func(c *Config) { c.DigestInvalid = true }), []string{"txboot.digest"}},
		{"digest other algo", "txboot.digest=sha512:" + hex64, mod(func(c *Config) { c.DigestInvalid = true }), []string{"txboot.digest"}},
		{"digest non hex", "txboot.digest=sha256:" + strings.Repeat("g", 64), mod(func(c *Config) { c.DigestInvalid = true }), []string{"txboot.digest"}},
		{"digest empty", "txboot.digest=", mod(func(c *Config) { c.DigestInvalid = true }), []string{"txboot.digest"}},
		{"digest bare", "txboot.digest", mod(func(c *Config) { c.DigestInvalid = true }), []string{"txboot.digest"}},
		{"digest bad then good", "txboot.digest=x txboot.digest=sha256:" + hex64, mod(func(c *Config) { c.Digest = "sha256:" + hex64 }), []string{"txboot.digest"}},
		{"digest good then bad", "txboot.digest=sha256:" + hex64 + " txboot.digest=x", mod(func(c *Config) { c.DigestInvalid = true }), []string{"txboot.digest"}},
		// txboot.image: the same rules as txboot.digest, and independent of it
		{"image", "txboot.image=sha256:" + hex64, mod(func(c *Config) { c.Image = "sha256:" + hex64 }), nil},
		{"image upper", "txboot.image=SHA256:" + strings.ToUpper(hex64), mod(func(c *Config) { c.Image = "sha256:" + hex64 }), nil},
		{"image short", "txboot.image=sha256:" + hex64[1:], mod(func(c *Config) { c.ImageInvalid = true }), []string{"txboot.image"}},
		{"image no algo", "txboot.image=" + hex64, mod(func(c *Config) { c.ImageInvalid = true }), []string{"txboot.image"}},
		{"image other algo", "txboot.image=sha512:" + hex64, mod(func(c *Config) { c.ImageInvalid = true }), []string{"txboot.image"}},
		{"image empty", "txboot.image=", mod(func(c *Config) { c.ImageInvalid = true }), []string{"txboot.image"}},
		{"image bare", "txboot.image", mod(func(c *Config) { c.ImageInvalid = true }), []string{"txboot.image"}},
		{"image bad then good", "txboot.image=x txboot.image=sha256:" + hex64, mod(func(c *Config) { c.Image = "sha256:" + hex64 }), []string{"txboot.image"}},
		{"image good then bad", "txboot.image=sha256:" + hex64 + " txboot.image=x", mod(func(c *Config) { c.ImageInvalid = true }), []string{"txboot.image"}},
		{"image bad, digest good", "txboot.digest=sha256:" + hex64 + " txboot.image=x", mod(func(c *Config) { c.Digest = "sha256:" + hex64; c.ImageInvalid = true }), []string{"txboot.image"}},

		// txboot.verify
		{"verify full", "txboot.verify=full", mod(func(c *Config) { c.Verify = VerifyFull }), nil},
		{"verify off", "txboot.verify=off", mod(func(c *Config) { c.Verify = VerifyOff }), nil},
		{"verify upper", "txboot.verify=FULL", mod(func(c *Config) { c.Verify = VerifyFull }), nil},
		{"verify bad", "txboot.verify=paranoid", mod(nil), []string{"txboot.verify"}},
		{"verify bad last", "txboot.verify=full txboot.verify=", mod(nil), []string{"txboot.verify"}},

		// booleans
		{"force bare", "txboot.force", mod(func(c *Config) { c.Force = true }), nil},
		{"force 1", "txboot.force=1", mod(func(c *Config) { c.Force = true }), nil},
		{"force yes", "txboot.force=yes", mod(func(c *Config) { c.Force = true }), nil},
		{"force True", "txboot.force=True", mod(func(c *Config) { c.Force = true }), nil},
		{"force 0", "txboot.force=0", mod(nil), nil},
		{"force no", "txboot.force=no", mod(nil), nil},
		{"force false", "txboot.force=false", mod(nil), nil},
		{"force bad", "txboot.force=maybe", mod(nil), []string{"txboot.force"}},
		{"force empty", "txboot.force=", mod(nil), []string{"txboot.force"}},
		{"force on then off", "txboot.force txboot.force=0", mod(nil), nil},
		{"shell", "rd.txboot.shell=1", mod(func(c *Config) { c.Shell = true }), nil},
		{"shell bare", "rd.txboot.shell", mod(func(c *Config) { c.Shell = true }), nil},
		{"shell bad", "rd.txboot.shell=2", mod(nil), []string{"rd.txboot.shell"}},
		{"debug", "rd.txboot.debug=true", mod(func(c *Config) { c.Debug = true }), nil},
		{"debug off", "rd.txboot.debug=off", mod(nil), nil},

		// passthrough, typos, init args
		{"unknown", "panic=-1 systemd.unit=rescue.target nomodeset", mod(func(c *Config) {
			c.Unknown = []Param{{"panic", "-1", true}, {"systemd.unit", "rescue.target", true}, {"nomodeset", "", false}}
		}), nil},
		{"unknown txboot typo", "txboot.digset=x", mod(func(c *Config) {
			c.Unknown = []Param{{"txboot.digset", "x", true}}
		}), []string{"txboot.digset"}},
		{"keys are case-sensitive", "ROOT=/dev/sda", mod(func(c *Config) {
			c.Unknown = []Param{{"ROOT", "/dev/sda", true}}
		}), nil},
		{"dashes", "quiet -- single emergency", mod(func(c *Config) {
			c.Quiet = true
			c.InitArgs = []string{"single", "emergency"}
		}), nil},
		{"dashes keep keys", "-- txboot.tx=5 a=\"b c\"", mod(func(c *Config) {
			c.InitArgs = []string{"txboot.tx=5", "a=b c"}
		}), nil},
		{"dashes with value is a param", "--=x", mod(func(c *Config) {
			c.Unknown = []Param{{"--", "x", true}}
		}), nil},
		{"trailing dashes", "ro --", mod(nil), nil},

		// quoting
		{"quoted value", `rootflags="a b"`, mod(func(c *Config) { c.RootFlags = "a b" }), nil},
		{"quoted token", `"rootflags=a b"`, mod(func(c *Config) { c.RootFlags = "a b" }), nil},
		{"quote mid value", `rootflags=a"b c"`, mod(func(c *Config) { c.RootFlags = `a"b c"` }), nil},
		{"unterminated quote", `rootflags="a b quiet`, mod(func(c *Config) { c.RootFlags = "a b quiet" }), nil},
		{"quoted bare", `"quiet"`, mod(func(c *Config) { c.Quiet = true }), nil},
		{"tabs newlines", "quiet\trw\nro\r\n", mod(func(c *Config) { c.Quiet = true }), nil},
		{"garbage", "\xff\xfe=\x00\x01 \"\" = ==", mod(func(c *Config) {
			c.Unknown = []Param{{"\xff\xfe", "", true}, {"\x01", "", false}, {"", "", false}, {"=", "", false}, {"=", "", true}}
		}), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ws := Parse(tt.in)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse(%q)\n got %+v\nwant %+v", tt.in, got, tt.want)
			}
			var keys []string
			for _, w := range ws {
				keys = append(keys, w.Key)
				if w.Msg == "" || w.String() == "" {
					t.Errorf("warning without message: %+v", w)
				}
			}
			if !reflect.DeepEqual(keys, tt.warns) {
				t.Errorf("Parse(%q) warnings = %v, want keys %v", tt.in, ws, tt.warns)
			}
		})
	}
}

// TestSplitKernelQuirks pins the tokeniser to lib/cmdline.c behaviour.
func TestSplitKernelQuirks(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{`a=b c`, []string{"a=b", "c"}},
		{`a="b c" d`, []string{"a=b c", "d"}},
		{`"a=b c" d`, []string{"a=b c", "d"}},
		{`"a="b c"" d`, []string{"a=b", `c""`, "d"}}, // the inner quote closes the outer
		{`a=`, []string{"a="}},
		{`"a="`, []string{"a="}},
		{`=a=b`, []string{"=a=b"}}, // key "=a", value "b"
		{`a=b=c`, []string{"a=b=c"}},
		{`"`, []string{""}},
		{`""`, []string{""}},
		{`a"b c"d e`, []string{`a"b c"d`, "e"}},
	}
	for _, tt := range tests {
		ps, _ := Split(tt.in)
		var got []string
		for _, p := range ps {
			got = append(got, p.String())
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Split(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	ps, _ := Split("=a=b")
	if len(ps) != 1 || ps[0].Key != "=a" || ps[0].Value != "b" {
		t.Errorf("Split(=a=b) = %+v, want key \"=a\" value \"b\"", ps)
	}
}

// TestParseFixtures parses real command lines from testdata/*.cmdline.
func TestParseFixtures(t *testing.T) {
	tests := []struct {
		file string
		want func(t *testing.T, c Config, ws []Warning)
	}{
		{"debian.cmdline", func(t *testing.T, c Config, ws []Warning) {
			if c.RootSpec.Kind != RootUUID || !c.ReadOnly || !c.Quiet || len(ws) != 0 {
				t.Errorf("got %+v %v", c, ws)
			}
		}},
		{"txboot.cmdline", func(t *testing.T, c Config, ws []Warning) {
			if c.Tx != 42 || c.Digest == "" || c.Image != "sha256:"+strings.Repeat("fedcba9876543210", 4) || c.Verify != VerifyFull || !c.Shell ||
				c.RootSpec.Kind != RootPartLabel || c.RootTimeout != 60*time.Second || c.Watchdog != 30*time.Second ||
				len(c.Unknown) != 1 || len(ws) != 0 { // panic=-1
				t.Errorf("got %+v %v", c, ws)
			}
		}},
	}
	for _, tt := range tests {
		b, err := os.ReadFile("testdata/" + tt.file)
		if err != nil {
			t.Fatal(err)
		}
		c, ws := Parse(string(b))
		tt.want(t, c, ws)
	}
}

func TestRootSpecString(t *testing.T) {
	for _, s := range []string{"/dev/vda1", "UUID=" + uuid, "LABEL=x y", "PARTUUID=1234abcd-01", "PARTLABEL=root"} {
		c, _ := Parse(`root="` + s + `"`)
		if got := c.RootSpec.String(); got != s {
			t.Errorf("RootSpec.String() = %q, want %q", got, s)
		}
	}
	if s := (RootSpec{}).String(); s != "" {
		t.Errorf("zero RootSpec.String() = %q", s)
	}
}

// checkInvariants holds for every input; the fuzzer relies on it.
func checkInvariants(t *testing.T, in string, c Config, ws []Warning) {
	t.Helper()
	switch c.Verify {
	case VerifyFast, VerifyFull, VerifyOff:
	default:
		t.Errorf("Verify = %q", c.Verify)
	}
	if c.RootTimeout < MinRootTimeout || c.RootTimeout > MaxRootTimeout {
		t.Errorf("RootTimeout = %v", c.RootTimeout)
	}
	if c.RootDelay < 0 || c.RootDelay > MaxRootDelay {
		t.Errorf("RootDelay = %v", c.RootDelay)
	}
	if c.Watchdog < 0 || c.Watchdog > MaxWatchdog || c.Watchdog%time.Second != 0 {
		t.Errorf("Watchdog = %v", c.Watchdog)
	}
	for _, p := range c.Unknown {
		switch p.Key {
		case "txboot.watchdog", "txboot.timeout", "rootdelay":
			t.Errorf("%s passed through as unknown", p.Key)
		}
	}
	if c.Init != "" && !strings.HasPrefix(c.Init, "/") {
		t.Errorf("Init = %q", c.Init)
	}
	checkPin(t, "txboot.digest", c.Digest, c.DigestInvalid, c.Unknown)
	checkPin(t, "txboot.image", c.Image, c.ImageInvalid, c.Unknown)
	if (c.RootSpec.Kind == RootNone) != (c.RootSpec.Value == "") {
		t.Errorf("RootSpec = %+v", c.RootSpec)
	}
	if c.RootSpec.Kind == RootPath && !validDevPath(c.RootSpec.Value) {
		t.Errorf("RootSpec path = %q", c.RootSpec.Value)
	}
	for _, w := range ws {
		if w.Msg == "" {
			t.Errorf("empty warning message: %+v", w)
		}
	}
	c2, ws2 := Parse(in)
	if !reflect.DeepEqual(c, c2) || !reflect.DeepEqual(ws, ws2) {
		t.Errorf("Parse is not deterministic for %q", in)
	}
}

// checkPin: a pin is normalised and never comes with its invalid flag, and
// a pin key is always consumed (so a garbled one leaves the flag, never
// nothing).
func checkPin(t *testing.T, key, pin string, invalid bool, unknown []Param) {
	t.Helper()
	if pin != "" {
		if invalid {
			t.Errorf("%s %q with the invalid flag", key, pin)
		}
		if d, ok := parseDigest(pin); !ok || d != pin {
			t.Errorf("%s = %q not normalised", key, pin)
		}
	}
	for _, p := range unknown {
		if p.Key == key {
			t.Errorf("%s passed through", key)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "root=/dev/vda1 ro quiet", `root="LABEL=a b" -- x y`,
		"txboot.tx=1 txboot.digest=sha256:" + hex64 + " txboot.verify=full txboot.force",
		"txboot.tx=1 txboot.digest=sha256:" + hex64 + " txboot.image=sha256:" + hex64 + " txboot.image=SHA256:x",
		"txboot.timeout=0 rootdelay=9999 loglevel=9 init=sh", `"a="b c"" =x= "`,
		"root=UUID=" + uuid + " rd.txboot.shell=1 rd.txboot.debug", "\x00\xff\"--\" --",
		"rootdelay=9300000000 txboot.timeout=18446744074 txboot.watchdog=9300000000",
		"rootdelay=18446744074 txboot.watchdog=0 txboot.watchdog", "txboot.watchdog=3600 txboot.timeout=600 rootdelay=600",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		c, ws := Parse(in)
		checkInvariants(t, in, c, ws)
	})
}
