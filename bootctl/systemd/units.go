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
