package main

// Model: extraConfig entries are set per key, and a key set to "" is removed.
//
// vSphere API reference, VirtualMachineConfigSpec.extraConfig: "Additional configuration
// information for the virtual machine. This describes a set of modifications to the additional
// options. If the key is already present, it will be reset with the new value provided.
// Otherwise, a new option is added. Keys with empty values will be removed."
//
// Stock vcsim 0.24 (virtual_machine.go applyExtraConfig) appends every entry, so a key set twice
// has two entries and a key set to "" gets a second, empty one. Applied by ReconfigVM_Task,
// CreateVM_Task, ImportVApp and CloneVM_Task (vm.go, handler.go), and by the lab's guestinfo/set
// (control.go).

import (
	"fmt"
	"strings"

	"github.com/vmware/govmomi/vim25/types"
)

// vcsim's own extraConfig aliases (virtual_machine.go extraConfigAlias): "SET.guest.ipAddress"
// and friends set guest properties, never an extraConfig entry. They are left to vcsim.
func isVcsimAlias(key string) bool {
	return key == "ip0" || strings.HasPrefix(key, "SET.")
}

func optionString(value interface{}) string {
	switch v := value.(type) {
	case nil:
		return ""
	case string:
		return v
	default:
		return fmt.Sprint(v)
	}
}

// mergeExtraConfig applies changes to current as vCenter does: one entry per key, replaced in
// place; a "" value removes the key. Aliases are skipped (vcsim applies them).
func mergeExtraConfig(current, changes []types.BaseOptionValue) []types.BaseOptionValue {
	out := append([]types.BaseOptionValue(nil), current...)
	for _, change := range changes {
		option := change.GetOptionValue()
		if isVcsimAlias(option.Key) {
			continue
		}
		value := optionString(option.Value)
		index := -1
		for i, existing := range out {
			if existing.GetOptionValue().Key == option.Key {
				index = i
				break
			}
		}
		switch {
		case value == "" && index >= 0:
			out = append(out[:index], out[index+1:]...)
		case value == "":
		case index >= 0:
			out[index] = &types.OptionValue{Key: option.Key, Value: value}
		default:
			out = append(out, &types.OptionValue{Key: option.Key, Value: value})
		}
	}
	return out
}

// collapseExtraConfig turns what stock vcsim appended into what vCenter keeps: merging every
// entry, in order, into an empty list.
func collapseExtraConfig(appended []types.BaseOptionValue) []types.BaseOptionValue {
	return mergeExtraConfig(nil, appended)
}

// aliasesOnly keeps the entries vcsim itself must see (its guest-property aliases).
func aliasesOnly(entries []types.BaseOptionValue) []types.BaseOptionValue {
	var out []types.BaseOptionValue
	for _, e := range entries {
		if isVcsimAlias(e.GetOptionValue().Key) {
			out = append(out, e)
		}
	}
	return out
}

// lastValue is the guest's view of an extraConfig key under stock vcsim: the last entry wins,
// "" is unset.
func lastValue(entries []types.BaseOptionValue, key string) string {
	value := ""
	for _, e := range entries {
		if option := e.GetOptionValue(); option.Key == key {
			value = optionString(option.Value)
		}
	}
	return value
}
