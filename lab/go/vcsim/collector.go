// The model of the PropertyCollector: a filter's current state is reported by the next
// WaitForUpdatesEx, whenever the filter was created.
//
// vSphere API reference, PropertyCollector.CreateFilter: "Creates a new filter for the given set
// of managed objects." and WaitForUpdatesEx: "Calculate what updates, if any, have occurred
// since the given version"; PropertyFilterUpdate / ObjectUpdate kind "enter": "This object has
// entered the filter": the objects a new filter selects enter it, and the next wait reports them
// with their current values. The deployer (requester/vsphere_wait.py) creates a filter for each
// task after the task was submitted, and for each VM after it was powered on, and relies on that.
//
// Stock vcsim 0.24 computes a new filter's "enter" updates only when some object of the
// inventory changes after the filter was made: its tasks run to the end inside the call that
// starts them, so a filter on a finished task is never reported, and a wait for it lasts until
// something else in the inventory changes. The model: after CreateFilter, each object the filter
// names is touched with an empty change, so the wait loop runs its "enter" calculation.
package main

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// strictCollector embeds the collector by value: the simulator makes each session's view of the
// root collector with reflect.New of the registered type, so a pointer field would be nil there.
type strictCollector struct {
	simulator.PropertyCollector
}

// CreatePropertyCollector: a private collector is a strict one too.
func (pc *strictCollector) CreatePropertyCollector(ctx *simulator.Context, req *types.CreatePropertyCollector) soap.HasFault {
	private := &strictCollector{}
	private.Self = types.ManagedObjectReference{Type: "PropertyCollector"}
	return &methods.CreatePropertyCollectorBody{Res: &types.CreatePropertyCollectorResponse{
		Returnval: ctx.Session.Put(private).Reference(),
	}}
}

// CreateFilter: the stock filter, then an empty change to each object it names. A filter naming
// an object that does not exist is refused, as PropertyFilterSpec.reportMissingObjectsInResults
// says: "If false or unset and objectSet refers to missing objects, filter creation will fail
// with a ManagedObjectNotFound fault." Stock vcsim 0.24 makes the filter, and every later
// WaitForUpdatesEx of that collector then fails with ManagedObjectNotFound.
func (pc *strictCollector) CreateFilter(ctx *simulator.Context, req *types.CreateFilter) soap.HasFault {
	if report := req.Spec.ReportMissingObjectsInResults; report == nil || !*report {
		for _, spec := range req.Spec.ObjectSet {
			if !exists(ctx, spec.Obj) {
				return &methods.CreateFilterBody{Fault_: simulator.Fault("", &types.ManagedObjectNotFound{Obj: spec.Obj})}
			}
		}
	}
	res := pc.PropertyCollector.CreateFilter(ctx, req)
	for _, spec := range req.Spec.ObjectSet {
		if obj := ctx.Map.Get(spec.Obj); obj != nil {
			ctx.Map.Update(obj, nil)
		}
	}
	return res
}

// modelPropertyCollector registers the strict collector under the root collector's reference.
func modelPropertyCollector() {
	si := simulator.Map.Get(vim25.ServiceInstance).(*simulator.ServiceInstance)
	root := &strictCollector{}
	root.Self = si.Content.PropertyCollector
	simulator.Map.Put(root)
}

// exists: the object is in the inventory, or in the session's own objects (an HttpNfcLease, a
// private collector, a view), as the stock collector looks them up.
func exists(ctx *simulator.Context, ref types.ManagedObjectReference) bool {
	if ctx.Session != nil && ctx.Session.Get(ref) != nil {
		return true
	}
	return ctx.Map.Get(ref) != nil
}
