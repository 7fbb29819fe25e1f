package main

// Models in OvfManager.CreateImportSpec: the descriptor's ProductSection properties become the
// import spec's vApp configuration, and vmw:Config firmware is honoured.
//
// vSphere API reference, OvfCreateImportSpecParams.propertyMapping: "The assignment of values to
// the properties found in the descriptor. If no value is specified for an option, the default
// value from the descriptor is used." VirtualMachineImportSpec.configSpec: "Configuration for the
// virtual machine." So the properties go to configSpec.vAppConfig (a VmConfigSpec: a
// VAppPropertySpec "add" per property, integer keys from 0, id the ovf:key with the section's
// ovf:class and ovf:instance as classId and instanceId (DSP0243 qualifies the key with them),
// type "password" where ovf:password="true" (VAppPropertyInfo.type lists "password") else the
// ovf:type, userConfigurable, value the mapping's else the default; a mapping for a property the
// descriptor declares ovf:userConfigurable="false" is refused in the result's error list with
// NotUserConfigurableProperty, "The property value cannot be changed since it is not user
// configurable": lab choice, where vCenter may instead drop the value as ovftool does without
// --X:enableHiddenProperties; the deployer must do neither), one VAppProductSpec per
// ProductSection, and ovfEnvironmentTransport the VirtualHardwareSection's ovf:transport split on
// spaces (DSP0243: a space-separated list). VirtualMachineConfigSpec.firmware takes a
// GuestOsDescriptorFirmwareType, "bios" or "efi"; which one a descriptor asks for is VMware's OVF
// extension, not the API reference's: <vmw:Config vmw:key="firmware" vmw:value="efi"/> in the
// VirtualHardwareSection, as ovftool writes it (lab reading: vCenter honours it on import).
//
// Stock vcsim 0.24 (ovf_manager.go) turns every PropertyMapping entry into an extraConfig entry,
// keeps no property of the descriptor, and leaves the firmware bios.

import (
	"encoding/xml"
	"strings"

	"github.com/vmware/govmomi/ovf"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Embedded by value, as labVM is (vm.go).
type labOvfManager struct {
	simulator.OvfManager
	lab *lab
}

// The parts of a descriptor govmomi's ovf package does not read.
type hardwareExtras struct {
	VirtualSystem struct {
		Hardware []struct {
			Transport string `xml:"transport,attr"`
			Config    []struct {
				Key   string `xml:"key,attr"`
				Value string `xml:"value,attr"`
			} `xml:"Config"`
		} `xml:"VirtualHardwareSection"`
	} `xml:"VirtualSystem"`
}

func (m *labOvfManager) CreateImportSpec(ctx *simulator.Context, req *types.CreateImportSpec) soap.HasFault {
	inner := *req
	inner.Cisp.PropertyMapping = nil // stock would make extraConfig of them
	res := m.OvfManager.CreateImportSpec(ctx, &inner)
	body, ok := res.(*methods.CreateImportSpecBody)
	if !ok || body.Fault_ != nil || body.Res == nil {
		return res
	}
	spec, ok := body.Res.Returnval.ImportSpec.(*types.VirtualMachineImportSpec)
	if !ok {
		return res
	}
	env, err := ovf.Unmarshal(strings.NewReader(req.OvfDescriptor))
	if err != nil || env.VirtualSystem == nil {
		return res
	}
	var extras hardwareExtras
	_ = xml.Unmarshal([]byte(req.OvfDescriptor), &extras)

	mapping := map[string]string{}
	for _, kv := range req.Cisp.PropertyMapping {
		mapping[kv.Key] = kv.Value
	}
	vapp := &types.VmConfigSpec{}
	var refused []types.LocalizedMethodFault
	key := int32(0)
	for i, section := range env.VirtualSystem.Product {
		product := &types.VAppProductInfo{Key: int32(i), Name: section.Product, Vendor: section.Vendor,
			Version: section.Version, FullVersion: section.FullVersion, VendorUrl: section.VendorURL,
			ProductUrl: section.ProductURL, AppUrl: section.AppURL}
		class, instance := "", ""
		if section.Class != nil {
			class = *section.Class
		}
		if section.Instance != nil {
			instance = *section.Instance
		}
		product.ClassId, product.InstanceId = class, instance
		vapp.Product = append(vapp.Product, types.VAppProductSpec{
			ArrayUpdateSpec: types.ArrayUpdateSpec{Operation: types.ArrayUpdateOperationAdd}, Info: product})
		for _, p := range section.Property {
			info := &types.VAppPropertyInfo{Key: key, ClassId: class, InstanceId: instance, Id: p.Key,
				Type: p.Type, UserConfigurable: types.NewBool(p.UserConfigurable != nil && *p.UserConfigurable)}
			key++
			if p.Password != nil && *p.Password {
				info.Type = passwordType
			}
			if p.Label != nil {
				info.Label = *p.Label
			}
			if p.Description != nil {
				info.Description = *p.Description
			}
			if p.Default != nil {
				info.DefaultValue = *p.Default
			}
			qualified := p.Key
			if class != "" {
				qualified = class + "." + qualified
			}
			if instance != "" {
				qualified = qualified + "." + instance
			}
			value, mapped := mapping[qualified]
			if !mapped {
				value, mapped = mapping[p.Key]
			}
			if mapped && !configurable(*info) {
				refused = append(refused, types.LocalizedMethodFault{Fault: notUserConfigurable(*info),
					LocalizedMessage: "Property " + qualified + " is not user configurable."})
			}
			if mapped {
				info.Value = value
			} else {
				info.Value = info.DefaultValue
			}
			vapp.Property = append(vapp.Property, types.VAppPropertySpec{
				ArrayUpdateSpec: types.ArrayUpdateSpec{Operation: types.ArrayUpdateOperationAdd}, Info: info})
		}
	}
	if hw := extras.VirtualSystem.Hardware; len(hw) > 0 {
		vapp.OvfEnvironmentTransport = strings.Fields(hw[0].Transport)
		for _, c := range hw[0].Config {
			if c.Key == "firmware" && c.Value != "" {
				spec.ConfigSpec.Firmware = c.Value
			}
		}
	}
	if len(refused) > 0 {
		body.Res.Returnval.Error = append(body.Res.Returnval.Error, refused...)
		body.Res.Returnval.ImportSpec = nil
		return body
	}
	if len(vapp.Product) > 0 || len(vapp.Property) > 0 || len(vapp.OvfEnvironmentTransport) > 0 {
		spec.ConfigSpec.VAppConfig = vapp
	}
	return body
}
