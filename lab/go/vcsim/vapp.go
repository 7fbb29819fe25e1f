package main

// Model: vApp properties are kept on a VM (import, create, clone, reconfigure), and the values
// of password-typed ones are write-only.
//
// vSphere API reference, VirtualMachineConfigSpec.vAppConfig: "Configuration of vApp meta-data
// for a virtual machine"; vAppConfigRemoved: "Set to true, if the vApp configuration should be
// removed". VmConfigSpec.ovfEnvironmentTransport: "List the transports to use for properties.
// Supported values are: iso and com.vmware.guestInfo. If this list is set, it replaces all exiting
// entries. An empty list will not make any changes. A list with a single element {""} will clear
// the list of transports." (the deployer clears the transport so: requester/vsphere.py).
// VAppPropertySpec is an ArrayUpdateSpec: operation add, edit or remove, removeKey the key.
//
// VAppPropertyInfo.type, "password": "the value field and default value field will always be
// returned as an empty string when queried. Thus, it is a write-only property." So the real
// value and default of such a property live in lab.secrets (per VM, per property key), read only
// by the OVF environment builder (ovfenv.go); config.vAppConfig, and so every PropertyCollector
// read, carries "".
//
// Stock vcsim 0.24 ignores spec.vAppConfig everywhere: a VM has no vApp properties at all.
//
// NotUserConfigurableProperty: "The property value cannot be changed since it is not user
// configurable." An "edit" of a property whose userConfigurable is false (or unset) fails the task
// with it, as vCenter fails a reconfiguration that sets such a property ("Property ... is not
// user configurable", terraform-provider-vsphere issue 394). Lab choice: an edit that itself sets
// userConfigurable true is applied (an administrator's redefinition of the property).
//
// Lab choices (the reference does not say): an "add" of an existing key, an "edit" or "remove"
// of a missing key, or a property spec without info fail the task with InvalidArgument; an
// "edit" replaces the fields it sets and always sets value (SOAP cannot tell an absent value from
// "", and the deployer clears a property by editing its value to ""); CloneVM_Task copies the
// source's vApp configuration, then applies spec.config.vAppConfig.

import (
	"strconv"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const passwordType = "password"

func vappInfo(vm *simulator.VirtualMachine) *types.VmConfigInfo {
	if vm.Config == nil || vm.Config.VAppConfig == nil {
		return nil
	}
	return vm.Config.VAppConfig.GetVmConfigInfo()
}

func arrayKey(key types.AnyType) (int32, bool) {
	switch k := key.(type) {
	case int32:
		return k, true
	case int64:
		return int32(k), true
	case int:
		return int32(k), true
	case int16:
		return int32(k), true
	case int8:
		return int32(k), true
	case string:
		n, err := strconv.ParseInt(k, 10, 32)
		return int32(n), err == nil
	}
	return 0, false
}

func invalid(property string) types.BaseMethodFault {
	return &types.InvalidArgument{InvalidProperty: property}
}

// configurable: VAppPropertyInfo.userConfigurable, "Whether the property is user-configurable or
// a system property"; unset reads as false, DSP0243's default for ovf:userConfigurable.
func configurable(prop types.VAppPropertyInfo) bool {
	return prop.UserConfigurable != nil && *prop.UserConfigurable
}

// notUserConfigurable: "The property value cannot be changed since it is not user configurable."
// (NotUserConfigurableProperty, a VAppPropertyFault naming the property).
func notUserConfigurable(prop types.VAppPropertyInfo) types.BaseMethodFault {
	return &types.NotUserConfigurableProperty{VAppPropertyFault: types.VAppPropertyFault{
		Id: prop.Id, Category: prop.Category, Label: prop.Label, Type: prop.Type}}
}

// applyVApp applies a VM's spec.vAppConfig / spec.vAppConfigRemoved to its config.vAppConfig,
// keeping password values in l.secrets. The caller holds the VM's lock.
func (l *lab) applyVApp(vm *simulator.VirtualMachine, base types.BaseVmConfigSpec, removed *bool) types.BaseMethodFault {
	id := vm.Self.Value
	if removed != nil && *removed {
		l.mu.Lock()
		delete(l.secrets, id)
		l.mu.Unlock()
		vm.Config.VAppConfig = nil
		simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.vAppConfig", Val: nil}})
		if base == nil {
			return nil
		}
	}
	if base == nil {
		return nil
	}
	spec := base.GetVmConfigSpec()

	info := &types.VmConfigInfo{}
	if current := vappInfo(vm); current != nil {
		copied := *current
		copied.Property = append([]types.VAppPropertyInfo(nil), current.Property...)
		copied.Product = append([]types.VAppProductInfo(nil), current.Product...)
		info = &copied
	}
	l.mu.Lock()
	secrets := map[int32]secretValue{}
	for k, v := range l.secrets[id] {
		secrets[k] = v
	}
	l.mu.Unlock()

	for _, ps := range spec.Product {
		if fault := applyProduct(info, ps); fault != nil {
			return fault
		}
	}
	for _, ps := range spec.Property {
		if fault := applyProperty(info, secrets, ps); fault != nil {
			return fault
		}
	}
	if len(spec.OvfEnvironmentTransport) > 0 {
		info.OvfEnvironmentTransport = nonEmpty(spec.OvfEnvironmentTransport)
	}
	if len(spec.Eula) > 0 {
		info.Eula = nonEmpty(spec.Eula)
	}
	if spec.IpAssignment != nil {
		info.IpAssignment = *spec.IpAssignment
	}
	if spec.InstallBootRequired != nil {
		info.InstallBootRequired = *spec.InstallBootRequired
	}
	if spec.InstallBootStopDelay != 0 {
		info.InstallBootStopDelay = spec.InstallBootStopDelay
	}

	l.mu.Lock()
	l.secrets[id] = secrets
	l.mu.Unlock()
	vm.Config.VAppConfig = info
	simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.vAppConfig", Val: info}})
	return nil
}

func nonEmpty(values []string) []string {
	out := []string{}
	for _, v := range values {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}

func applyProduct(info *types.VmConfigInfo, ps types.VAppProductSpec) types.BaseMethodFault {
	find := func(key int32) int {
		for i := range info.Product {
			if info.Product[i].Key == key {
				return i
			}
		}
		return -1
	}
	switch ps.Operation {
	case types.ArrayUpdateOperationAdd:
		if ps.Info == nil || find(ps.Info.Key) >= 0 {
			return invalid("vAppConfig.product")
		}
		info.Product = append(info.Product, *ps.Info)
	case types.ArrayUpdateOperationEdit:
		if ps.Info == nil || find(ps.Info.Key) < 0 {
			return invalid("vAppConfig.product")
		}
		info.Product[find(ps.Info.Key)] = *ps.Info
	case types.ArrayUpdateOperationRemove:
		key, ok := arrayKey(ps.RemoveKey)
		if !ok || find(key) < 0 {
			return invalid("vAppConfig.product.removeKey")
		}
		i := find(key)
		info.Product = append(info.Product[:i], info.Product[i+1:]...)
	default:
		return invalid("vAppConfig.product.operation")
	}
	return nil
}

func applyProperty(info *types.VmConfigInfo, secrets map[int32]secretValue, ps types.VAppPropertySpec) types.BaseMethodFault {
	find := func(key int32) int {
		for i := range info.Property {
			if info.Property[i].Key == key {
				return i
			}
		}
		return -1
	}
	switch ps.Operation {
	case types.ArrayUpdateOperationAdd:
		if ps.Info == nil || find(ps.Info.Key) >= 0 {
			return invalid("vAppConfig.property")
		}
		prop := *ps.Info
		delete(secrets, prop.Key)
		if prop.Type == passwordType {
			secrets[prop.Key] = secretValue{value: prop.Value, def: prop.DefaultValue}
			prop.Value, prop.DefaultValue = "", ""
		}
		info.Property = append(info.Property, prop)
	case types.ArrayUpdateOperationEdit:
		if ps.Info == nil || find(ps.Info.Key) < 0 {
			return invalid("vAppConfig.property")
		}
		i := find(ps.Info.Key)
		prop, edit := info.Property[i], ps.Info
		if !configurable(prop) && (edit.UserConfigurable == nil || !*edit.UserConfigurable) {
			return notUserConfigurable(prop)
		}
		old, wasPassword := secrets[prop.Key]
		if !wasPassword {
			old = secretValue{value: prop.Value, def: prop.DefaultValue}
		}
		for _, f := range []struct{ src, dst *string }{
			{&edit.ClassId, &prop.ClassId}, {&edit.InstanceId, &prop.InstanceId}, {&edit.Id, &prop.Id},
			{&edit.Category, &prop.Category}, {&edit.Label, &prop.Label}, {&edit.Type, &prop.Type},
			{&edit.TypeReference, &prop.TypeReference}, {&edit.Description, &prop.Description},
		} {
			if *f.src != "" {
				*f.dst = *f.src
			}
		}
		if edit.UserConfigurable != nil {
			prop.UserConfigurable = edit.UserConfigurable
		}
		value, def := edit.Value, old.def
		if edit.DefaultValue != "" {
			def = edit.DefaultValue
		}
		delete(secrets, prop.Key)
		if prop.Type == passwordType {
			secrets[prop.Key] = secretValue{value: value, def: def}
			prop.Value, prop.DefaultValue = "", ""
		} else {
			prop.Value, prop.DefaultValue = value, def
		}
		info.Property[i] = prop
	case types.ArrayUpdateOperationRemove:
		key, ok := arrayKey(ps.RemoveKey)
		if !ok || find(key) < 0 {
			return invalid("vAppConfig.property.removeKey")
		}
		i := find(key)
		info.Property = append(info.Property[:i], info.Property[i+1:]...)
		delete(secrets, key)
	default:
		return invalid("vAppConfig.property.operation")
	}
	return nil
}

// copyVApp gives a clone its source's vApp configuration and password values.
func (l *lab) copyVApp(from, to *simulator.VirtualMachine) {
	info := vappInfo(from)
	if info == nil {
		return
	}
	copied := *info
	copied.Property = append([]types.VAppPropertyInfo(nil), info.Property...)
	copied.Product = append([]types.VAppProductInfo(nil), info.Product...)
	copied.OvfEnvironmentTransport = append([]string(nil), info.OvfEnvironmentTransport...)
	l.mu.Lock()
	secrets := map[int32]secretValue{}
	for k, v := range l.secrets[from.Self.Value] {
		secrets[k] = v
	}
	l.secrets[to.Self.Value] = secrets
	l.mu.Unlock()
	to.Config.VAppConfig = &copied
	simulator.Map.Update(to, []types.PropertyChange{{Name: "config.vAppConfig", Val: &copied}})
}

// environmentValues is what the OVF environment carries for each property of a VM: its fully
// qualified key (DSP0243: [classId.]id[.instanceId]) and its value, else its default, with the
// real values of password-typed ones.
func (l *lab) environmentValues(vm *simulator.VirtualMachine) (keys, values []string) {
	info := vappInfo(vm)
	if info == nil {
		return nil, nil
	}
	l.mu.Lock()
	secrets := l.secrets[vm.Self.Value]
	l.mu.Unlock()
	for _, prop := range info.Property {
		key := prop.Id
		if prop.ClassId != "" {
			key = prop.ClassId + "." + key
		}
		if prop.InstanceId != "" {
			key = key + "." + prop.InstanceId
		}
		value, def := prop.Value, prop.DefaultValue
		if secret, ok := secrets[prop.Key]; ok {
			value, def = secret.value, secret.def
		}
		if value == "" {
			value = def
		}
		keys, values = append(keys, key), append(values, value)
	}
	return keys, values
}
