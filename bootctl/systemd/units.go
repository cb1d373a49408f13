package systemd

// The units are embedded so that `bootctl install` can put them into an
// OS tree.

import _ "embed"

// HealthUnitName is the health check unit's file name.
const HealthUnitName = "txboot-health.service"

// HealthUnit is txboot-health.service as shipped in this directory.
//
//go:embed txboot-health.service
var HealthUnit []byte

// SealUnitName is the unit that seals the store at boot (bootctl seal).
const SealUnitName = "txboot-seal.service"

// SealUnit is txboot-seal.service as shipped in this directory.
//
//go:embed txboot-seal.service
var SealUnit []byte

// Unit is one unit file bootctl install puts into an OS tree and enables.
type Unit struct {
	Name string
	Data []byte
}

// Units are the units bootctl install installs, in this order.
func Units() []Unit {
	return []Unit{{HealthUnitName, HealthUnit}, {SealUnitName, SealUnit}}
}
