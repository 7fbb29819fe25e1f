package main

// The lab's own control endpoints (not vCenter's), served by the simulator's HTTPS server under
// /firsttrust-lab/. JSON in and out; every request carries "Authorization: Bearer <token>" with
// the token from FIRSTTRUST_VCSIM_LAB_TOKEN (else 403). They are the lab's side of what ESXi and
// VMware Tools do (the guest's guestinfo, the IP Tools reports) plus the datastore switch and the
// request count; lab/vcsim.py's LabControl is their client.
//
//	POST /firsttrust-lab/guestinfo/get {"vm": "vm-42", "key": "guestinfo.X"} -> {"value": str|null}
//	     the guest's view (vmware-rpctool "info-get"): a guest-only variable (guestinfo.ovfEnv set
//	     at power-on, ovfenv.go; with -guestinfo-set-private what the guest set), else the VM's
//	     extraConfig value of that key (the last entry: stock vcsim keeps several); "" is null.
//	POST /firsttrust-lab/guestinfo/set {"vm", "key", "value"} -> {"ok": true}
//	     what the guest's "info-set" does. By default the value is also the VM's extraConfig entry
//	     (replaced, "" deleting, extraconfig.go; appended under -stock). Whether a value the guest
//	     sets appears in config.extraConfig on ESXi is not known: -guestinfo-set-private takes the
//	     conservative side, the value is then visible to the guest only.
//	POST /firsttrust-lab/guest/tools {"vm", "ip"} -> {"ok": true}
//	     what VMware Tools reports: guest.ipAddress, guest.net[0].ipAddress, guest.toolsRunningStatus
//	     "guestToolsRunning", through Map.Update so WaitForUpdatesEx sees it.
//	POST /firsttrust-lab/datastore {"name", "accessible": bool, "maintenanceMode": "normal"|...}
//	     -> {"ok": true}: datastore.go's switch (409 under -stock).
//	GET  /firsttrust-lab/requests -> {"sessions": {KEY: {"user", "methods": {M: N}}},
//	     "unauthenticated": {M: N}}: requests.go's count (409 under -stock).
//
// Only "guestinfo." keys: a guest reads and writes guestinfo, never the VM's other settings.

import (
	"crypto/subtle"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	controlPrefix = "/firsttrust-lab/"
	// A guestinfo value is at most what a guest RPC carries (the VMX's 64 KiB); a request is a
	// value JSON-escaped with room to spare.
	maxControlBytes = 1 << 20
)

type controlRequest struct {
	VM              string  `json:"vm"`
	Key             string  `json:"key"`
	Value           *string `json:"value"`
	IP              string  `json:"ip"`
	Name            string  `json:"name"`
	Accessible      *bool   `json:"accessible"`
	MaintenanceMode string  `json:"maintenanceMode"`
}

type controlError struct {
	status  int
	message string
}

func writeJSON(w http.ResponseWriter, status int, body interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func (l *lab) controlHandler(token string) http.Handler {
	expected := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), expected) != 1 {
			writeJSON(w, http.StatusForbidden, map[string]string{"error": "the lab's control token is missing or wrong"})
			return
		}
		path := strings.TrimPrefix(r.URL.Path, controlPrefix)
		if path == "requests" {
			if r.Method != http.MethodGet {
				writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "GET only"})
				return
			}
			if l.stock {
				writeJSON(w, http.StatusConflict, map[string]string{"error": "the request count is a model; this simulator runs with -stock"})
				return
			}
			writeJSON(w, http.StatusOK, l.counter.snapshot())
			return
		}
		if r.Method != http.MethodPost {
			writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "POST only"})
			return
		}
		var req controlRequest
		data, err := io.ReadAll(io.LimitReader(r.Body, maxControlBytes+1))
		if err != nil || len(data) > maxControlBytes || json.Unmarshal(data, &req) != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "the request is not a JSON object of at most 1 MiB"})
			return
		}
		var answer interface{}
		var failure *controlError
		switch path {
		case "guestinfo/get":
			answer, failure = l.guestinfoGet(req)
		case "guestinfo/set":
			answer, failure = l.guestinfoSet(req)
		case "guest/tools":
			answer, failure = l.guestTools(req)
		case "datastore":
			answer, failure = l.datastoreSwitch(req)
		default:
			failure = &controlError{http.StatusNotFound, "no such lab endpoint"}
		}
		if failure != nil {
			writeJSON(w, failure.status, map[string]string{"error": failure.message})
			return
		}
		writeJSON(w, http.StatusOK, answer)
	})
}

func guestVM(req controlRequest, needKey bool) (*simulator.VirtualMachine, *controlError) {
	if needKey && !strings.HasPrefix(req.Key, "guestinfo.") {
		return nil, &controlError{http.StatusBadRequest, "a guest reads and writes guestinfo.* keys only"}
	}
	vm := vmByID(req.VM)
	if vm == nil {
		return nil, &controlError{http.StatusNotFound, "no virtual machine " + req.VM}
	}
	return vm, nil
}

func (l *lab) guestinfoGet(req controlRequest) (interface{}, *controlError) {
	vm, failure := guestVM(req, true)
	if failure != nil {
		return nil, failure
	}
	var value string
	simulator.Map.WithLock(vm, func() {
		l.mu.Lock()
		guestValue, private := l.guest[vm.Self.Value][req.Key]
		l.mu.Unlock()
		if private {
			value = guestValue
		} else if vm.Config != nil {
			value = lastValue(vm.Config.ExtraConfig, req.Key)
		}
	})
	if value == "" {
		return map[string]interface{}{"value": nil}, nil
	}
	return map[string]interface{}{"value": value}, nil
}

func (l *lab) guestinfoSet(req controlRequest) (interface{}, *controlError) {
	vm, failure := guestVM(req, true)
	if failure != nil {
		return nil, failure
	}
	if req.Value == nil {
		return nil, &controlError{http.StatusBadRequest, "guestinfo/set needs a value (\"\" deletes)"}
	}
	value := *req.Value
	simulator.Map.WithLock(vm, func() {
		if l.setPrivate {
			l.setGuestVar(vm.Self.Value, req.Key, &value)
			return
		}
		entry := []types.BaseOptionValue{&types.OptionValue{Key: req.Key, Value: value}}
		var updated []types.BaseOptionValue
		if l.stock {
			updated = append(append([]types.BaseOptionValue(nil), vm.Config.ExtraConfig...), entry...)
		} else {
			updated = mergeExtraConfig(vm.Config.ExtraConfig, entry)
		}
		vm.Config.ExtraConfig = updated
		simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.extraConfig", Val: updated}})
		l.setGuestVar(vm.Self.Value, req.Key, nil)
	})
	return map[string]bool{"ok": true}, nil
}

func (l *lab) guestTools(req controlRequest) (interface{}, *controlError) {
	vm, failure := guestVM(req, false)
	if failure != nil {
		return nil, failure
	}
	if req.IP == "" {
		return nil, &controlError{http.StatusBadRequest, "guest/tools needs an ip"}
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Guest == nil {
			vm.Guest = &types.GuestInfo{}
		}
		nets := append([]types.GuestNicInfo(nil), vm.Guest.Net...)
		if len(nets) == 0 {
			nets = []types.GuestNicInfo{{Connected: true, DeviceConfigId: -1}}
		}
		nets[0].IpAddress = []string{req.IP}
		running := string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "guest.ipAddress", Val: req.IP},
			{Name: "guest.net", Val: nets},
			{Name: "guest.toolsRunningStatus", Val: running},
			{Name: "guest.toolsStatus", Val: types.VirtualMachineToolsStatusToolsOk},
			{Name: "guest.guestOperationsReady", Val: false},
			{Name: "summary.guest.ipAddress", Val: req.IP},
			{Name: "summary.guest.toolsRunningStatus", Val: running},
			{Name: "summary.guest.toolsStatus", Val: types.VirtualMachineToolsStatusToolsOk},
		})
	})
	// GuestInfo.guestOperationsReady: "Guest Operations availability. If true, the virtual machine
	// is ready to process guest operations." It is its own property, not toolsRunningStatus: on a
	// real VM Tools reports running before its guest operations are ready. Lab choice: ready
	// guestOpsReadyDelay after Tools reports running, so a client that starts guest operations
	// as soon as Tools runs meets GuestOperationsUnavailable here as it may on vCenter.
	time.AfterFunc(guestOpsReadyDelay, func() {
		simulator.Map.WithLock(vm, func() {
			if vm.Guest != nil && vm.Guest.ToolsRunningStatus == string(types.VirtualMachineToolsRunningStatusGuestToolsRunning) {
				simulator.Map.Update(vm, []types.PropertyChange{{Name: "guest.guestOperationsReady", Val: true}})
			}
		})
	})
	return map[string]bool{"ok": true}, nil
}

const guestOpsReadyDelay = 500 * time.Millisecond

func (l *lab) datastoreSwitch(req controlRequest) (interface{}, *controlError) {
	if l.stock {
		return nil, &controlError{http.StatusConflict, "the datastore switch is a model; this simulator runs with -stock"}
	}
	ds := datastoreByName(req.Name)
	if ds == nil {
		return nil, &controlError{http.StatusNotFound, "no datastore named " + req.Name}
	}
	mode := req.MaintenanceMode
	if mode == "" {
		mode = string(types.DatastoreSummaryMaintenanceModeStateNormal)
	}
	switch types.DatastoreSummaryMaintenanceModeState(mode) {
	case types.DatastoreSummaryMaintenanceModeStateNormal, types.DatastoreSummaryMaintenanceModeStateEnteringMaintenance,
		types.DatastoreSummaryMaintenanceModeStateInMaintenance:
	default:
		return nil, &controlError{http.StatusBadRequest, "maintenanceMode is normal, enteringMaintenance or inMaintenance"}
	}
	accessible := req.Accessible == nil || *req.Accessible
	setDatastoreState(ds, accessible, mode)
	return map[string]bool{"ok": true}, nil
}
