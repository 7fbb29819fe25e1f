package main

// Model: at power-on, the OVF environment document is built from the VM's vApp properties and
// given to the guest, and only to the guest, as guestinfo.ovfEnv.
//
// vSphere API reference, VmConfigSpec.ovfEnvironmentTransport: "List the transports to use for
// properties. Supported values are: iso and com.vmware.guestInfo." The document is DMTF DSP0243's
// OVF environment (clause 11) in the shape vCenter writes it (Environment with oe:id and
// ve:vCenterId, PlatformSection, PropertySection with every property's oe:key and oe:value,
// ve:EthernetAdapterSection), with the values of password-typed properties: the guest is who they
// are for (VAppPropertyInfo: write-only is about "when queried").
//
// It is kept in lab.guest, never in config.extraConfig or any property the API can read; the
// guest reads it through the lab's guestinfo/get (control.go). It is rebuilt at every power-on
// (vCenter builds it then), and dropped at a power-on without the com.vmware.guestInfo transport.
// The iso transport is not modelled: no CD-ROM image is made.
//
// Stock vcsim 0.24 keeps no vApp properties and builds no environment.

import (
	"encoding/xml"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	guestInfoTransport = "com.vmware.guestInfo"
	ovfEnvKey          = "guestinfo.ovfEnv"
)

func escapeAttr(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s)) // escapes & < > " ' and \t \n \r as character references
	return b.String()
}

// prepareOvfEnvironment runs before a power-on: the caller holds the VM's lock.
func (l *lab) prepareOvfEnvironment(vm *simulator.VirtualMachine) {
	info := vappInfo(vm)
	transport := false
	if info != nil {
		for _, t := range info.OvfEnvironmentTransport {
			transport = transport || t == guestInfoTransport
		}
	}
	if !transport {
		l.setGuestVar(vm.Self.Value, ovfEnvKey, nil)
		return
	}
	document := l.ovfEnvironment(vm)
	l.setGuestVar(vm.Self.Value, ovfEnvKey, &document)
}

func (l *lab) ovfEnvironment(vm *simulator.VirtualMachine) string {
	esxID, version := "", "6.5.0"
	if vm.Runtime.Host != nil {
		esxID = vm.Runtime.Host.Value
		if host, ok := simulator.Map.Get(*vm.Runtime.Host).(*simulator.HostSystem); ok &&
			host.Summary.Config.Product != nil && host.Summary.Config.Product.Version != "" {
			version = host.Summary.Config.Product.Version
		}
	}
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	b.WriteString("<Environment\n")
	b.WriteString(`     xmlns="http://schemas.dmtf.org/ovf/environment/1"` + "\n")
	b.WriteString(`     xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"` + "\n")
	b.WriteString(`     xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"` + "\n")
	b.WriteString(`     xmlns:ve="http://www.vmware.com/schema/ovfenv"` + "\n")
	b.WriteString(`     oe:id=""` + "\n")
	b.WriteString(`     ve:esxId="` + escapeAttr(esxID) + `"` + "\n")
	b.WriteString(`     ve:vCenterId="` + escapeAttr(vm.Self.Value) + `">` + "\n")
	b.WriteString("   <PlatformSection>\n")
	b.WriteString("      <Kind>VMware ESXi</Kind>\n")
	b.WriteString("      <Version>" + escapeAttr(version) + "</Version>\n")
	b.WriteString("      <Vendor>VMware, Inc.</Vendor>\n")
	b.WriteString("      <Locale>en</Locale>\n")
	b.WriteString("   </PlatformSection>\n")
	b.WriteString("   <PropertySection>\n")
	keys, values := l.environmentValues(vm)
	for i := range keys {
		b.WriteString(`         <Property oe:key="` + escapeAttr(keys[i]) + `" oe:value="` + escapeAttr(values[i]) + `"/>` + "\n")
	}
	b.WriteString("   </PropertySection>\n")
	var adapters []string
	if vm.Config != nil {
		for _, device := range vm.Config.Hardware.Device {
			card, ok := device.(types.BaseVirtualEthernetCard)
			if !ok {
				continue
			}
			nic := card.GetVirtualEthernetCard()
			network := ""
			if backing, ok := nic.Backing.(*types.VirtualEthernetCardNetworkBackingInfo); ok {
				network = backing.DeviceName
			}
			unit := int32(0)
			if nic.UnitNumber != nil {
				unit = *nic.UnitNumber
			}
			adapters = append(adapters, `      <ve:Adapter ve:mac="`+escapeAttr(nic.MacAddress)+`" ve:network="`+
				escapeAttr(network)+`" ve:unitNumber="`+strconv.Itoa(int(unit))+`"/>`)
		}
	}
	if len(adapters) > 0 {
		b.WriteString("   <ve:EthernetAdapterSection>\n" + strings.Join(adapters, "\n") + "\n   </ve:EthernetAdapterSection>\n")
	}
	b.WriteString("</Environment>\n")
	return b.String()
}

// setGuestVar sets (value non-nil) or drops a guest-only variable of a VM.
func (l *lab) setGuestVar(vm, key string, value *string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if value == nil {
		delete(l.guest[vm], key)
		return
	}
	if l.guest[vm] == nil {
		l.guest[vm] = map[string]string{}
	}
	l.guest[vm][key] = *value
}
