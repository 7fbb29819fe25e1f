package main

// The lab's state beside the simulator's inventory, and how the models hook into vcsim.
//
// Hooks: methods of a VirtualMachine are overridden by a wrapper registered under the VM's own
// reference (simulator.Map.Put, as govmomi's example_extend_test.go does). Only VMs are wrapped,
// and only once their creation is complete: vcsim type-asserts *simulator.VirtualMachine while
// creating one (CloneVM_Task, ImportVApp), and type-asserts or type-switches folders, clusters
// and resource pools in many places (FindChild, placement, host events), so those are never
// wrapped. Their methods that a model changes (ImportVApp, CreateVM_Task, CreateClusterEx,
// ReconfigureComputeResource_Task) are hooked at the SOAP level instead (handler.go).

import (
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// secretValue is a password-typed vApp property's real value and default: what the OVF
// environment carries, while every API read shows "" (vapp.go).
type secretValue struct {
	value, def string
}

type lab struct {
	stock      bool // -stock: every model off
	setPrivate bool // -guestinfo-set-private

	mu sync.Mutex
	// Per VM (managed object id): password-typed vApp properties by key (vapp.go).
	secrets map[string]map[int32]secretValue
	// Per VM: variables only the guest sees (guestinfo.ovfEnv; with -guestinfo-set-private the
	// values the guest set). "" means unset: it hides the extraConfig entry of the same key.
	guest map[string]map[string]string
	// VMs put into the inventory while a SOAP-level creation hook runs (handler.go).
	capture *[]*simulator.VirtualMachine

	createMu sync.Mutex // one SOAP-level creation hook at a time (they take milliseconds)
	counter  *requestCounter
	guestOps *guestOps // guestops.go
	// The certificate every host's config.certificate holds (hostcert.go); nil under -stock.
	hostCertPEM []byte
}

func newLab(stock, setPrivate bool) *lab {
	return &lab{
		stock:      stock,
		setPrivate: setPrivate,
		secrets:    map[string]map[int32]secretValue{},
		guest:      map[string]map[string]string{},
		counter:    newRequestCounter(),
	}
}

// installModels wraps the inventory's VMs and the OvfManager, and listens for new objects.
func (l *lab) installModels() {
	for _, e := range simulator.Map.All("VirtualMachine") {
		if vm, ok := e.(*simulator.VirtualMachine); ok {
			l.wrapVM(vm)
		}
	}
	ovf := simulator.Map.Get(*simulator.Map.Get(vimServiceInstance).(*simulator.ServiceInstance).Content.OvfManager)
	simulator.Map.Put(&labOvfManager{OvfManager: *ovf.(*simulator.OvfManager), lab: l})
	simulator.Map.AddHandler(l)
	modelPropertyCollector()
}

var vimServiceInstance = types.ManagedObjectReference{Type: "ServiceInstance", Value: "ServiceInstance"}

// wrapVM registers the wrapper under the VM's reference. The wrapper holds the VM's state from
// then on (see labVM): callers wrap a VM only when its creation is complete and do not use the
// old pointer afterwards.
func (l *lab) wrapVM(vm *simulator.VirtualMachine) {
	simulator.Map.Put(&labVM{VirtualMachine: *vm, lab: l})
}

// vmByID is the simulator's VM (unwrapped) of a managed object id, or nil.
func vmByID(id string) *simulator.VirtualMachine {
	return asVM(simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: id}))
}

func asVM(obj mo.Reference) *simulator.VirtualMachine {
	switch vm := obj.(type) {
	case *labVM:
		return &vm.VirtualMachine
	case *simulator.VirtualMachine:
		return vm
	}
	return nil
}

// The simulator.RegisterObject interface: told of every object put, updated or removed.

func (l *lab) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "FirsttrustLab", Value: "models"}
}

func (l *lab) PutObject(obj mo.Reference) {
	if vm, ok := obj.(*simulator.VirtualMachine); ok {
		l.mu.Lock()
		if l.capture != nil {
			*l.capture = append(*l.capture, vm)
		}
		l.mu.Unlock()
	}
}

func (l *lab) UpdateObject(mo.Reference, []types.PropertyChange) {}

func (l *lab) RemoveObject(ref types.ManagedObjectReference) {
	if ref.Type == "VirtualMachine" {
		l.mu.Lock()
		delete(l.secrets, ref.Value)
		delete(l.guest, ref.Value)
		l.mu.Unlock()
	}
}

// runTask runs f as a vCenter task on obj, as vcsim's own methods do (synchronously).
func runTask(obj mo.Reference, name string, f func() (types.AnyType, types.BaseMethodFault)) types.ManagedObjectReference {
	return simulator.CreateTask(obj, name, func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return f()
	}).Run()
}

// taskOutcome is the result or fault of a task vcsim ran (its tasks complete before they return).
func taskOutcome(ref types.ManagedObjectReference) (types.AnyType, types.BaseMethodFault) {
	task, ok := simulator.Map.Get(ref).(*simulator.Task)
	if !ok {
		return nil, &types.RuntimeFault{}
	}
	if task.Info.Error != nil {
		return nil, task.Info.Error.Fault
	}
	return task.Info.Result, nil
}
