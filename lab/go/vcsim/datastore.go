package main

// Model: a lab-only switch marks a datastore inaccessible or in maintenance.
//
// vSphere API reference, DatastoreSummary.accessible: "The connectivity status of this
// datastore. If this is set to false, meaning the datastore is not accessible, this datastore's
// capacity and freespace properties cannot be validated." DatastoreSummary.maintenanceMode: "The
// current maintenance mode state of the datastore. The set of possible values is described in
// DatastoreSummaryMaintenanceModeState." ("normal", "enteringMaintenance", "inMaintenance").
//
// Stock vcsim 0.24 has every datastore accessible and "normal", with no way to change either
// (no maintenance-mode methods, no disconnect). The switch is the lab's control endpoint
// POST /firsttrust-lab/datastore (control.go); the change goes through Map.Update, so a
// PropertyCollector filter on the datastore sees it. Off with -stock.

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func datastoreByName(name string) *simulator.Datastore {
	for _, e := range simulator.Map.All("Datastore") {
		if ds, ok := e.(*simulator.Datastore); ok && ds.Name == name {
			return ds
		}
	}
	return nil
}

func setDatastoreState(ds *simulator.Datastore, accessible bool, maintenance string) {
	simulator.Map.WithLock(ds, func() {
		simulator.Map.Update(ds, []types.PropertyChange{
			{Name: "summary.accessible", Val: accessible},
			{Name: "summary.maintenanceMode", Val: maintenance},
		})
	})
}
