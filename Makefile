# txboot — see README.md. `make test` and `make demo` work on a fresh Debian
# machine as root: they install what they need first.
SHELL := /bin/bash
GO ?= go
export CGO_ENABLED := 0
export TXBOOT_KERNEL_DIR ?= $(CURDIR)/.cache/kernels-trixie
GOFLAGS_BUILD := -trimpath -ldflags='-s -w -buildid='
BINS := bin/bootctl bin/initagent bin/mkinitramfs

.PHONY: all build deps test unit qemu-test torture demo demo-debian bench lint fuzz clean

all: build

build:
	@mkdir -p bin
	$(GO) build $(GOFLAGS_BUILD) -o bin/bootctl ./bootctl
	$(GO) build $(GOFLAGS_BUILD) -o bin/initagent ./initagent
	$(GO) build $(GOFLAGS_BUILD) -o bin/mkinitramfs ./mkinitramfs

# System packages (apt-get, only when missing), Debian's kernels
# of Debian 13 (apt-get download + dpkg -x into .cache/kernels-trixie, never installed) and a
# Debian 13 (trixie) and a Debian 12 (bookworm) root for the Debian
# scenarios (debootstrap once per machine each, cached under
# /var/cache/txboot keyed by its inputs; trixie's packages come through a
# private apt configuration, scripts/debian-apt.sh, not the host's sources).
deps:
	bash scripts/install-deps.sh
	bash scripts/fetch-kernels.sh $(TXBOOT_KERNEL_DIR)
	bash scripts/debian-root.sh trixie >/dev/null
	bash scripts/debian-root.sh bookworm >/dev/null

lint:
	@test -z "$$(gofmt -l . | tee /dev/stderr)" || { echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

# Everything: unit tests, crash tests, and QEMU boots of real kernels.
test: deps build lint
	$(GO) test -count=1 -timeout 35m ./...

unit: build
	$(GO) test -count=1 -short $$($(GO) list ./... | grep -v qemu-tests)

qemu-test: deps build
	$(GO) test -count=1 -timeout 35m -v ./qemu-tests/

# Power cuts in QEMU (qemu-tests/torture_test.go): TORTURE_CUTS cuts
# (default 200; make test runs 40), TXBOOT_TORTURE_SEED replays a run.
TORTURE_CUTS ?= 200
torture: deps build
	TXBOOT_TORTURE_CUTS=$(TORTURE_CUTS) $(GO) test -count=1 -timeout 180m -v -run '^TestPowerCut' ./qemu-tests/

demo: deps build
	bash scripts/demo.sh

# A real Debian 13 with systemd: installed, booted, a broken update healed
# with no input, then a package installed as a transaction and rolled back
# (six boots, about 6.5 minutes under TCG).
demo-debian: deps build
	$(GO) run ./qemu-tests/cmd/demo-debian

# Store vs ostree/cp (scripts/bench.sh), initramfs vs initramfs-tools, and
# QEMU boots with and without an in-boot fallback. Tables go to stdout.
bench: deps build
	bash scripts/bench.sh
	bash scripts/bench-repo.sh
	bash scripts/bench-xattr.sh
	bash scripts/bench-run.sh
	bash scripts/bench-seal.sh
	bash scripts/bench-health.sh
	bash scripts/bench-initramfs.sh
	$(GO) test -run '^$$' -bench Boot -benchtime 3x ./qemu-tests/ | grep -v '^ *\['

# Run each fuzz target for FUZZTIME (default 30s).
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

clean:
	rm -rf bin
