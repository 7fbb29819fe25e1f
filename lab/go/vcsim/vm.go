package main

// The VM wrapper: the methods of a VirtualMachine the models change. Each calls vcsim's own
// method for everything it does, inside a task of its own, and applies the models before that
// task completes, so a client waiting on the task never sees the stock state.

import (
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// labVM embeds the simulator's VirtualMachine by value, not by pointer: vcsim's PropertyCollector
// finds a wrapper's data by descending into its first field while that is a struct
// (property_collector.go getManagedObject), and a pointer there makes it panic. So wrapping
// moves the VM's state into the wrapper (lab.wrapVM), once nothing else holds the old pointer.
type labVM struct {
	simulator.VirtualMachine
	lab *lab
}

// ReconfigVMTask: extraConfig per key (extraconfig.go), vAppConfig kept (vapp.go). vcsim gets the
// rest of the spec: without vAppConfig (its VmReconfiguredEvent, readable through the API, must
// not carry password values) and with only its own extraConfig aliases.
func (vm *labVM) ReconfigVMTask(ctx *simulator.Context, req *types.ReconfigVM_Task) soap.HasFault {
	spec := req.Spec
	vapp, removed, extra := spec.VAppConfig, spec.VAppConfigRemoved, spec.ExtraConfig
	spec.VAppConfig, spec.VAppConfigRemoved, spec.ExtraConfig = nil, nil, aliasesOnly(extra)
	ref := runTask(&vm.VirtualMachine, "reconfigVm", func() (types.AnyType, types.BaseMethodFault) {
		res := vm.VirtualMachine.ReconfigVMTask(ctx, &types.ReconfigVM_Task{This: req.This, Spec: spec})
		if _, fault := taskOutcome(res.(*methods.ReconfigVM_TaskBody).Res.Returnval); fault != nil {
			return nil, fault
		}
		if fault := vm.lab.applyVApp(&vm.VirtualMachine, vapp, removed); fault != nil {
			return nil, fault
		}
		vm.lab.applyExtraConfig(&vm.VirtualMachine, extra)
		return nil, nil
	})
	return &methods.ReconfigVM_TaskBody{Res: &types.ReconfigVM_TaskResponse{Returnval: ref}}
}

// applyExtraConfig sets entries per key; a guestinfo key set through the API is what the guest
// then reads (it replaces a guest-only value the guest set with -guestinfo-set-private).
func (l *lab) applyExtraConfig(vm *simulator.VirtualMachine, entries []types.BaseOptionValue) {
	if len(entries) == 0 {
		return
	}
	merged := mergeExtraConfig(vm.Config.ExtraConfig, entries)
	vm.Config.ExtraConfig = merged
	simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.extraConfig", Val: merged}})
	for _, e := range entries {
		if key := e.GetOptionValue().Key; strings.HasPrefix(key, "guestinfo.") && key != ovfEnvKey {
			l.setGuestVar(vm.Self.Value, key, nil)
		}
	}
}

// PowerOnVMTask builds the OVF environment (ovfenv.go) before vcsim powers the VM on, so a guest
// that starts when it sees "poweredOn" finds it.
func (vm *labVM) PowerOnVMTask(ctx *simulator.Context, req *types.PowerOnVM_Task) soap.HasFault {
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn && !vm.Config.Template {
		vm.lab.prepareOvfEnvironment(&vm.VirtualMachine)
	}
	return vm.VirtualMachine.PowerOnVMTask(ctx, req)
}

// CloneVMTask: placement without DRS (drs.go), vApp configuration copied then spec'd (vapp.go),
// extraConfig per key (extraconfig.go), and the clone on spec.location.host when one is given
// (vcsim 0.24 always puts it on the source's host).
func (vm *labVM) CloneVMTask(ctx *simulator.Context, req *types.CloneVM_Task) soap.HasFault {
	location := req.Spec.Location
	if fault := placementFault(location.Pool, location.Host, "spec.location.host"); fault != nil {
		ref := runTask(&vm.VirtualMachine, "cloneVm", func() (types.AnyType, types.BaseMethodFault) { return nil, fault })
		return &methods.CloneVM_TaskBody{Res: &types.CloneVM_TaskResponse{Returnval: ref}}
	}
	inner := *req
	var vapp types.BaseVmConfigSpec
	var removed *bool
	if req.Spec.Config != nil {
		config := *req.Spec.Config
		vapp, removed = config.VAppConfig, config.VAppConfigRemoved
		config.VAppConfig, config.VAppConfigRemoved = nil, nil
		spec := req.Spec
		spec.Config = &config
		inner.Spec = spec
	}
	ref := runTask(&vm.VirtualMachine, "cloneVm", func() (types.AnyType, types.BaseMethodFault) {
		result, fault := vm.cloneOnHost(ctx, &inner, location.Host)
		if fault != nil {
			return nil, fault
		}
		cloneRef := result.(types.ManagedObjectReference)
		clone := asVM(simulator.Map.Get(cloneRef))
		simulator.Map.WithLock(clone, func() {
			vm.lab.finishCreated(clone)
			vm.lab.copyVApp(&vm.VirtualMachine, clone)
			// A clone is a copy of its source's configuration (VirtualMachine.CloneVM_Task:
			// "Creates a clone of this virtual machine"); stock vcsim gives it BIOS firmware
			// whatever the source's, so an EFI appliance's clone would not boot.
			clone.Config.Firmware = vm.Config.Firmware
			fault = vm.lab.applyVApp(clone, vapp, removed)
		})
		if fault != nil {
			return nil, fault
		}
		vm.lab.wrapVM(clone)
		return cloneRef, nil
	})
	return &methods.CloneVM_TaskBody{Res: &types.CloneVM_TaskResponse{Returnval: ref}}
}

// finishCreated applies the models to a VM vcsim just created from a spec (clone, CreateVM,
// ImportVApp): its appended extraConfig collapsed to one entry per key (the spec's entries applied
// in order, as vCenter applies them).
func (l *lab) finishCreated(vm *simulator.VirtualMachine) {
	collapsed := collapseExtraConfig(vm.Config.ExtraConfig)
	vm.Config.ExtraConfig = collapsed
	simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.extraConfig", Val: collapsed}})
}

// cloneOnHost runs vcsim's clone, on host when one is given: vcsim 0.24 creates the clone on the
// source's runtime.host whatever the spec says, so that field is set to the requested host for
// the duration of the call (the dispatcher holds the source's lock; no property change is
// announced, and it is restored before the task completes).
func (vm *labVM) cloneOnHost(ctx *simulator.Context, req *types.CloneVM_Task, host *types.ManagedObjectReference) (types.AnyType, types.BaseMethodFault) {
	if host != nil {
		if _, ok := simulator.Map.Get(*host).(*simulator.HostSystem); !ok {
			return nil, invalid("spec.location.host")
		}
		original, requested := vm.Runtime.Host, *host
		vm.Runtime.Host = &requested
		defer func() { vm.Runtime.Host = original }()
	}
	res := vm.VirtualMachine.CloneVMTask(ctx, req)
	return taskOutcome(res.(*methods.CloneVM_TaskBody).Res.Returnval)
}

// RelocateVMTask: placement without DRS (drs.go).
func (vm *labVM) RelocateVMTask(ctx *simulator.Context, req *types.RelocateVM_Task) soap.HasFault {
	if fault := placementFault(req.Spec.Pool, req.Spec.Host, "spec.host"); fault != nil {
		ref := runTask(&vm.VirtualMachine, "relocateVm", func() (types.AnyType, types.BaseMethodFault) { return nil, fault })
		return &methods.RelocateVM_TaskBody{Res: &types.RelocateVM_TaskResponse{Returnval: ref}}
	}
	return vm.VirtualMachine.RelocateVMTask(ctx, req)
}
