package main

// The lab's HTTP handler around the simulator's: the control endpoints (control.go), the request
// count (requests.go), and the models that change methods of objects vcsim must not see wrapped
// (lab.go): they run around vcsim's own SOAP dispatch.
//
// The SOAP body is read once into memory, because vcsim reads it all anyway, and handed on; the
// count takes only the method element's name from it. It is decoded further only for the hooked
// methods below, whose specs the models need, and is never logged or kept.

import (
	"bytes"
	"encoding/xml"
	"io"
	"net/http"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// A SOAP request larger than this is refused: an OVF descriptor is the largest thing the
// deployer sends (a few KiB); vCenter's own limit is larger, but nothing of ours comes close.
const maxSoapBytes = 32 << 20

func (l *lab) handler(inner http.Handler, token string) http.Handler {
	control := l.controlHandler(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, controlPrefix) {
			control.ServeHTTP(w, r)
			return
		}
		if !l.stock && isTransferPath(r.URL.Path) {
			l.guestOps.serveTransfer(w, r)
			return
		}
		if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, "/sdk") {
			inner.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxSoapBytes+1))
		_ = r.Body.Close()
		if err != nil || len(body) > maxSoapBytes {
			http.Error(w, "request too large or unreadable", http.StatusRequestEntityTooLarge)
			return
		}
		method := soapMethod(body)
		if !l.stock {
			l.counter.count(r, method)
		}
		serve := func(b []byte) {
			r.Body = io.NopCloser(bytes.NewReader(b))
			r.ContentLength = int64(len(b))
			if !l.stock && propertyMethods[method] && len(l.hostCertPEM) > 0 {
				l.serveRewritten(w, r, inner, l.expandHostCertificate) // hostcert.go
				return
			}
			if !l.stock && method == "ListProcessesInGuest" {
				l.serveRewritten(w, r, inner, zeroExitCodes) // guestops.go
				return
			}
			inner.ServeHTTP(w, r)
		}
		if l.stock {
			serve(body)
			return
		}
		switch method {
		case "ImportVApp", "CreateVM_Task":
			l.creationHook(w, method, body, serve)
		case "CreateClusterEx":
			l.createClusterHook(body, serve)
		case "ReconfigureComputeResource_Task":
			l.reconfigureClusterHook(body, serve)
		default:
			serve(body)
		}
	})
}

// soapMethod is the local name of the SOAP Body's first child element: the method called.
func soapMethod(body []byte) string {
	decoder := xml.NewDecoder(bytes.NewReader(body))
	inBody := false
	for {
		token, err := decoder.Token()
		if err != nil {
			return ""
		}
		if start, ok := token.(xml.StartElement); ok {
			if inBody {
				return start.Name.Local
			}
			inBody = start.Name.Local == "Body"
		}
	}
}

// decodeRequest is the request struct of a SOAP call (types.ImportVApp, ...), decoded as vcsim does.
func decodeRequest(body []byte) interface{} {
	method, err := simulator.UnmarshalBody(types.TypeFunc(), body)
	if err != nil {
		return nil
	}
	return method.Body
}

// withoutElement is body without the first element named local (and its content): cut by byte
// offsets, so everything else reaches vcsim as the client sent it.
func withoutElement(body []byte, local string) []byte {
	decoder := xml.NewDecoder(bytes.NewReader(body))
	depth, start := 0, int64(-1)
	for {
		offset := decoder.InputOffset()
		token, err := decoder.RawToken()
		if err != nil {
			return body
		}
		switch t := token.(type) {
		case xml.StartElement:
			if start < 0 && t.Name.Local == local {
				start = offset
			}
			if start >= 0 {
				depth++
			}
		case xml.EndElement:
			if start >= 0 {
				depth--
				if depth == 0 {
					end := decoder.InputOffset()
					return append(append([]byte(nil), body[:start]...), body[end:]...)
				}
			}
		}
	}
}

// writeSoapFault answers a SOAP call with a fault, as vcsim does (HTTP 500, ServerFaultCode).
func writeSoapFault(w http.ResponseWriter, message, faultType, detail string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>`)
	b.WriteString(`<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" ` +
		`xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" ` +
		`xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault>`)
	b.WriteString("<faultcode>ServerFaultCode</faultcode><faultstring>" + escapeAttr(message) + "</faultstring>")
	b.WriteString(`<detail><` + faultType + `Fault xmlns="urn:vim25" xsi:type="` + faultType + `">` + detail +
		`</` + faultType + `Fault></detail>`)
	b.WriteString("</soapenv:Fault></soapenv:Body></soapenv:Envelope>")
	_, _ = io.WriteString(w, b.String())
}

// creationHook: ImportVApp (refused without a host in a cluster without DRS, drs.go) and
// CreateVM_Task create a VM from a VirtualMachineConfigSpec. vcsim gets the call without the
// spec's vAppConfig (its VmBeingCreatedEvent, readable through the API, would carry password
// values); once it has created the VM, the models apply the spec's vAppConfig (vapp.go) and
// collapse its extraConfig (extraconfig.go), and the VM is wrapped (vm.go). Hooks run one at a
// time, so the VM created is the one put into the inventory while vcsim served this call.
func (l *lab) creationHook(w http.ResponseWriter, method string, body []byte, serve func([]byte)) {
	var config *types.VirtualMachineConfigSpec
	switch req := decodeRequest(body).(type) {
	case *types.ImportVApp:
		if fault := placementFault(&req.This, req.Host, "host"); fault != nil {
			writeSoapFault(w, "a host is needed: the resource pool is in a cluster without DRS", "InvalidArgument",
				"<invalidProperty>host</invalidProperty>")
			return
		}
		if spec, ok := req.Spec.(*types.VirtualMachineImportSpec); ok {
			config = &spec.ConfigSpec
		}
	case *types.CreateVM_Task:
		config = &req.Config
	}
	if config == nil {
		serve(body)
		return
	}
	l.createMu.Lock()
	defer l.createMu.Unlock()
	var created []*simulator.VirtualMachine
	l.mu.Lock()
	l.capture = &created
	l.mu.Unlock()
	serve(withoutElement(body, "vAppConfig"))
	l.mu.Lock()
	l.capture = nil
	l.mu.Unlock()
	for i := len(created) - 1; i >= 0; i-- {
		vm := created[i]
		if vm.Name != config.Name || vm.Config == nil || simulator.Map.Get(vm.Self) == nil {
			continue
		}
		simulator.Map.WithLock(vm, func() {
			l.finishCreated(vm)
			_ = l.applyVApp(vm, config.VAppConfig, nil)
		})
		l.wrapVM(vm)
		break
	}
}

// createClusterHook: CreateClusterEx's spec.drsConfig.enabled, applied once vcsim has made the
// cluster (drs.go).
func (l *lab) createClusterHook(body []byte, serve func([]byte)) {
	req, ok := decodeRequest(body).(*types.CreateClusterEx)
	var folder *simulator.Folder
	if ok {
		folder, ok = simulator.Map.Get(req.This).(*simulator.Folder)
	}
	existed := ok && simulator.Map.FindByName(req.Name, folder.ChildEntity) != nil
	serve(body)
	if !ok || existed {
		return
	}
	if cluster, ok := simulator.Map.FindByName(req.Name, folder.ChildEntity).(*simulator.ClusterComputeResource); ok {
		enabled, _ := drsOfSpec(&req.Spec, false)
		setDrs(cluster, enabled)
	}
}

// reconfigureClusterHook: ReconfigureComputeResource_Task's drsConfig.enabled, applied before
// vcsim runs the task, so a client that waits on the task finds it applied (drs.go).
func (l *lab) reconfigureClusterHook(body []byte, serve func([]byte)) {
	if req, ok := decodeRequest(body).(*types.ReconfigureComputeResource_Task); ok {
		if cluster, ok := simulator.Map.Get(req.This).(*simulator.ClusterComputeResource); ok {
			if enabled, set := drsOfSpec(req.Spec, req.Modify); set {
				setDrs(cluster, enabled)
			}
		}
	}
	serve(body)
}
