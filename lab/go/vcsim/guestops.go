package main

// Guest operations on the lab's appliances: GuestOperationsManager's process manager and file
// manager, acting on the appliance a VM is (not on a Docker container, as stock vcsim's do).
//
// The guest's side is the lab process's: the simulator asks it through a Unix socket it names
// with -guest-ops-socket (lab/guestops.py, GuestOpsServer), one JSON line per request and one per
// answer, as the lab's emulated tools reach the VMX through the lab's guest channel. The lab
// checks the guest credentials against what the appliance's agent recorded (wrong ones are
// InvalidGuestLogin), runs the program in that appliance's guest context, and reads and writes
// its files. The password is in the request to the socket only (a 0600 socket in the lab's
// private working directory), never in a log or an argv.
//
// Modelled, each after the vSphere Web Services API reference:
//
//   - StartProgramInGuest: "Starts a program in the guest operating system." It returns the pid
//     and does not wait for the program (GuestProcessManager.StartProgramInGuest).
//   - ListProcessesInGuest: "List the processes running in the guest operating system, plus
//     those started by StartProgramInGuest that have recently completed"; of such a process
//     "the process exit code will be available if queried within 5 minutes after it completes"
//     and likewise its completion time (GuestProcessInfo.exitCode, endTime). The lab lists only
//     what guest operations started (lab choice: the guest's other processes are the host's).
//   - CreateTemporaryDirectoryInGuest / DeleteDirectoryInGuest: a directory made for the caller,
//     its path returned; removed (recursive when asked).
//   - InitiateFileTransferToGuest / FromGuest: a URL the client sends "a HTTP PUT request" /
//     "a HTTP GET request" to; "Multiple GET requests cannot be sent to the URL simultaneously.
//     URL will become invalid once a successful GET request is sent." and "The host part of the
//     URL is returned as '*' if the hostname to be used is the name of the server to which the
//     call was made ... The client replaces the asterisk with the server name on which it invoked
//     the call." (FileTransferInformation.url). The lab serves them over its own TLS under
//     transferPrefix (stock vcsim registers /guestFile/, and a second registration of a prefix
//     panics), the URL's host "*" with the simulator's port (lab choice: the client's server name
//     alone would name port 443). A URL unused for transferTTL is invalid (lab choice).
//   - The host's certificate: "In order to ensure a secure connection to the host when
//     transferring a file using HTTPS, the X.509 certificate for the host must be used to
//     authenticate the remote end of the connection" (vSphere Automation API, guest filesystem
//     transfers). Every host's config.certificate ("The host's SSL certificate, in PEM format")
//     is the certificate the simulator serves the transfers with (hostcert.go).
//   - Faults: InvalidGuestLogin "when an operation fails because authentication information used
//     to authenticate with the guest was not accepted"; GuestOperationsUnavailable "if the VM
//     agent for guest operations is not running" (guest.toolsRunningStatus is not
//     guestToolsRunning, guest.guestOperationsReady is not true, or the lab has no guest side for
//     the VM); InvalidPowerState when the VM
//     is not powered on; FileNotFound, FileAlreadyExists (InitiateFileTransferToGuest without
//     overwrite), GuestPermissionDenied "when an operation fails because the authentication used
//     is insufficient to perform the operation".
//   - One guest operation at a time per VM: each operation (and each transfer's read or write)
//     holds the VM's guest lock while the lab's guest side serves it (lab choice after vCenter's
//     behaviour as the lab's style guide states it; the reference does not say it).
//
// With -stock none of this is installed: stock vcsim 0.24 has no process manager methods
// (MethodNotFound) and answers transfers with GuestOperationsUnavailable without Docker.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	transferPrefix = "/firsttrust-guestFile/"
	transferTTL    = 5 * time.Minute
	// A file a transfer carries: certificates and small reports; the lab's guest side refuses more.
	maxTransferBytes = 1 << 20
	// The lab's guest side answers in milliseconds; a program is started, not waited for.
	guestSideTimeout = 20 * time.Second
)

type guestOps struct {
	socket string // the lab's guest side; "" when the lab has none (every operation unavailable)
	port   string // the simulator's port, for transfer URLs

	mu        sync.Mutex
	vmLocks   map[string]*sync.Mutex
	transfers map[string]*transfer
}

type transfer struct {
	vm, path, user, password string
	upload, overwrite        bool
	size                     int64
	expires                  time.Time
	inUse                    bool
}

func newGuestOps(socket string) *guestOps {
	return &guestOps{socket: socket, vmLocks: map[string]*sync.Mutex{}, transfers: map[string]*transfer{}}
}

func (g *guestOps) vmLock(id string) *sync.Mutex {
	g.mu.Lock()
	defer g.mu.Unlock()
	lock, ok := g.vmLocks[id]
	if !ok {
		lock = &sync.Mutex{}
		g.vmLocks[id] = lock
	}
	return lock
}

// guestAnswer is the lab's guest side's answer: Error a code (invalid_login, unavailable,
// not_found, exists, permission, failed) with Message one line, else the fields of the op.
type guestAnswer struct {
	Error     string            `json:"error"`
	Message   string            `json:"message"`
	Pid       int64             `json:"pid"`
	Path      string            `json:"path"`
	Size      int64             `json:"size"`
	Data      string            `json:"data"`
	Processes []guestProcessRow `json:"processes"`
}

type guestProcessRow struct {
	Pid       int64    `json:"pid"`
	Name      string   `json:"name"`
	Owner     string   `json:"owner"`
	CmdLine   string   `json:"cmdLine"`
	StartTime float64  `json:"startTime"`
	EndTime   *float64 `json:"endTime"`
	ExitCode  *int32   `json:"exitCode"`
}

// ask sends one request to the lab's guest side and returns its answer, or a fault.
func (g *guestOps) ask(request map[string]interface{}) (*guestAnswer, types.BaseMethodFault) {
	if g.socket == "" {
		return nil, new(types.GuestOperationsUnavailable)
	}
	conn, err := net.DialTimeout("unix", g.socket, guestSideTimeout)
	if err != nil {
		return nil, new(types.GuestOperationsUnavailable)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(guestSideTimeout))
	line, err := json.Marshal(request)
	if err != nil {
		return nil, &types.SystemError{Reason: "cannot encode the guest request"}
	}
	if _, err = conn.Write(append(line, '\n')); err != nil {
		return nil, new(types.GuestOperationsUnavailable)
	}
	reply, err := bufio.NewReaderSize(io.LimitReader(conn, 4*maxTransferBytes), 64*1024).ReadBytes('\n')
	if err != nil {
		return nil, new(types.GuestOperationsUnavailable)
	}
	var answer guestAnswer
	if json.Unmarshal(reply, &answer) != nil {
		return nil, &types.SystemError{Reason: "the lab's guest side answered malformed JSON"}
	}
	switch answer.Error {
	case "":
		return &answer, nil
	case "invalid_login":
		return nil, new(types.InvalidGuestLogin)
	case "unavailable":
		return nil, new(types.GuestOperationsUnavailable)
	case "not_found":
		return nil, &types.FileNotFound{FileFault: types.FileFault{File: strOf(request["path"])}}
	case "exists":
		return nil, &types.FileAlreadyExists{FileFault: types.FileFault{File: strOf(request["path"])}}
	case "permission":
		return nil, new(types.GuestPermissionDenied)
	}
	return nil, &types.SystemError{Reason: answer.Message}
}

func strOf(v interface{}) string {
	s, _ := v.(string)
	return s
}

// prepare checks what vCenter checks before it reaches the guest: the VM exists and is powered
// on, its tools run, the authentication is a name and password. It returns the request's base.
func (g *guestOps) prepare(ref types.ManagedObjectReference, auth types.BaseGuestAuthentication) (map[string]interface{}, types.BaseMethodFault) {
	vm := vmByID(ref.Value)
	if vm == nil {
		return nil, &types.ManagedObjectNotFound{Obj: ref}
	}
	var power types.VirtualMachinePowerState
	var tools string
	var ready bool
	simulator.Map.WithLock(vm, func() {
		power = vm.Runtime.PowerState
		if vm.Guest != nil {
			tools = vm.Guest.ToolsRunningStatus
			ready = vm.Guest.GuestOperationsReady != nil && *vm.Guest.GuestOperationsReady
		}
	})
	if power != types.VirtualMachinePowerStatePoweredOn {
		return nil, &types.InvalidPowerState{RequestedState: types.VirtualMachinePowerStatePoweredOn, ExistingState: power}
	}
	if tools != string(types.VirtualMachineToolsRunningStatusGuestToolsRunning) || !ready {
		return nil, new(types.GuestOperationsUnavailable)
	}
	creds, ok := auth.(*types.NamePasswordAuthentication)
	if !ok || creds.Username == "" {
		return nil, new(types.InvalidGuestLogin)
	}
	return map[string]interface{}{"vm": ref.Value, "user": creds.Username, "password": creds.Password}, nil
}

// do runs one guest operation on a VM: checks, the VM's guest lock, the lab's guest side.
func (g *guestOps) do(ref types.ManagedObjectReference, auth types.BaseGuestAuthentication, op string,
	fields map[string]interface{}) (*guestAnswer, types.BaseMethodFault) {
	request, fault := g.prepare(ref, auth)
	if fault != nil {
		return nil, fault
	}
	request["op"] = op
	for k, v := range fields {
		request[k] = v
	}
	lock := g.vmLock(ref.Value)
	lock.Lock()
	defer lock.Unlock()
	return g.ask(request)
}

// --- the process manager --------------------------------------------------------------------------

type labProcessManager struct {
	simulator.GuestProcessManager
	ops *guestOps
}

func (m *labProcessManager) StartProgramInGuest(ctx *simulator.Context, req *types.StartProgramInGuest) soap.HasFault {
	body := new(methods.StartProgramInGuestBody)
	spec := req.Spec.GetGuestProgramSpec()
	answer, fault := m.ops.do(req.Vm, req.Auth, "start", map[string]interface{}{
		"program": spec.ProgramPath, "arguments": spec.Arguments, "workingDirectory": spec.WorkingDirectory,
		"env": spec.EnvVariables, "path": spec.ProgramPath,
	})
	if fault != nil {
		body.Fault_ = simulator.Fault("", fault)
		return body
	}
	body.Res = &types.StartProgramInGuestResponse{Returnval: answer.Pid}
	return body
}

func (m *labProcessManager) ListProcessesInGuest(ctx *simulator.Context, req *types.ListProcessesInGuest) soap.HasFault {
	body := new(methods.ListProcessesInGuestBody)
	answer, fault := m.ops.do(req.Vm, req.Auth, "list", map[string]interface{}{"pids": req.Pids})
	if fault != nil {
		body.Fault_ = simulator.Fault("", fault)
		return body
	}
	infos := []types.GuestProcessInfo{}
	for _, row := range answer.Processes {
		info := types.GuestProcessInfo{Name: row.Name, Pid: row.Pid, Owner: row.Owner, CmdLine: row.CmdLine,
			StartTime: unixTime(row.StartTime)}
		if row.EndTime != nil {
			end := unixTime(*row.EndTime)
			info.EndTime = &end
			info.ExitCode = *row.ExitCode
		}
		infos = append(infos, info)
	}
	body.Res = &types.ListProcessesInGuestResponse{Returnval: infos}
	return body
}

// zeroExitCodes writes the exit code 0 of a process that ended: govmomi's GuestProcessInfo has
// exitCode as a plain int32 with omitempty, so 0 would be left out and read as "still running
// or unknown"; the reference says the exit code "will be available" once the process completed.
// An ended process is one with an endTime (its element comes right before exitCode).
func zeroExitCodes(body []byte) []byte {
	end := []byte("</endTime>")
	var out bytes.Buffer
	for {
		at := bytes.Index(body, end)
		if at < 0 {
			out.Write(body)
			return out.Bytes()
		}
		out.Write(body[:at+len(end)])
		body = body[at+len(end):]
		if !bytes.HasPrefix(body, []byte("<exitCode>")) {
			out.WriteString("<exitCode>0</exitCode>")
		}
	}
}

func unixTime(seconds float64) time.Time {
	return time.Unix(0, int64(seconds*1e9)).UTC()
}

// --- the file manager -----------------------------------------------------------------------------

type labFileManager struct {
	simulator.GuestFileManager
	ops *guestOps
}

func (m *labFileManager) CreateTemporaryDirectoryInGuest(ctx *simulator.Context, req *types.CreateTemporaryDirectoryInGuest) soap.HasFault {
	body := new(methods.CreateTemporaryDirectoryInGuestBody)
	answer, fault := m.ops.do(req.Vm, req.Auth, "mkdtemp", map[string]interface{}{
		"prefix": req.Prefix, "suffix": req.Suffix, "path": req.DirectoryPath})
	if fault != nil {
		body.Fault_ = simulator.Fault("", fault)
		return body
	}
	body.Res = &types.CreateTemporaryDirectoryInGuestResponse{Returnval: answer.Path}
	return body
}

func (m *labFileManager) DeleteDirectoryInGuest(ctx *simulator.Context, req *types.DeleteDirectoryInGuest) soap.HasFault {
	body := new(methods.DeleteDirectoryInGuestBody)
	_, fault := m.ops.do(req.Vm, req.Auth, "rmdir", map[string]interface{}{"path": req.DirectoryPath, "recursive": req.Recursive})
	if fault != nil {
		body.Fault_ = simulator.Fault("", fault)
		return body
	}
	body.Res = &types.DeleteDirectoryInGuestResponse{}
	return body
}

func (m *labFileManager) InitiateFileTransferToGuest(ctx *simulator.Context, req *types.InitiateFileTransferToGuest) soap.HasFault {
	body := new(methods.InitiateFileTransferToGuestBody)
	if req.FileSize < 0 || req.FileSize > maxTransferBytes {
		body.Fault_ = simulator.Fault("", &types.InvalidArgument{InvalidProperty: "fileSize"})
		return body
	}
	// The destination is checked now (exists without overwrite, a directory that is not there),
	// the file written when the PUT arrives.
	if _, fault := m.ops.do(req.Vm, req.Auth, "check-write", map[string]interface{}{
		"path": req.GuestFilePath, "overwrite": req.Overwrite}); fault != nil {
		body.Fault_ = simulator.Fault("", fault)
		return body
	}
	creds := req.Auth.(*types.NamePasswordAuthentication)
	token := m.ops.newTransfer(&transfer{vm: req.Vm.Value, path: req.GuestFilePath, user: creds.Username,
		password: creds.Password, upload: true, overwrite: req.Overwrite, size: req.FileSize})
	body.Res = &types.InitiateFileTransferToGuestResponse{Returnval: m.ops.transferURL(token)}
	return body
}

func (m *labFileManager) InitiateFileTransferFromGuest(ctx *simulator.Context, req *types.InitiateFileTransferFromGuest) soap.HasFault {
	body := new(methods.InitiateFileTransferFromGuestBody)
	answer, fault := m.ops.do(req.Vm, req.Auth, "stat", map[string]interface{}{"path": req.GuestFilePath})
	if fault != nil {
		body.Fault_ = simulator.Fault("", fault)
		return body
	}
	creds := req.Auth.(*types.NamePasswordAuthentication)
	token := m.ops.newTransfer(&transfer{vm: req.Vm.Value, path: req.GuestFilePath, user: creds.Username,
		password: creds.Password, size: answer.Size})
	body.Res = &types.InitiateFileTransferFromGuestResponse{Returnval: types.FileTransferInformation{
		Attributes: &types.GuestPosixFileAttributes{}, Size: answer.Size, Url: m.ops.transferURL(token)}}
	return body
}

func (g *guestOps) newTransfer(t *transfer) string {
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		fail("no randomness for a transfer token: %v", err)
	}
	token := hex.EncodeToString(raw)
	t.expires = time.Now().Add(transferTTL)
	g.mu.Lock()
	defer g.mu.Unlock()
	for key, old := range g.transfers {
		if time.Now().After(old.expires) {
			delete(g.transfers, key)
		}
	}
	g.transfers[token] = t
	return token
}

func (g *guestOps) transferURL(token string) string {
	return (&url.URL{Scheme: "https", Host: "*:" + g.port, Path: transferPrefix,
		RawQuery: url.Values{"token": []string{token}}.Encode()}).String()
}

// serveTransfer answers a PUT (to the guest) or GET (from the guest) on a transfer URL: once,
// one at a time, before it expires; 404 for a token it does not know or that expired.
func (g *guestOps) serveTransfer(w http.ResponseWriter, r *http.Request) {
	token := r.URL.Query().Get("token")
	g.mu.Lock()
	t, ok := g.transfers[token]
	if ok && (time.Now().After(t.expires) || t.inUse || t.upload != (r.Method == http.MethodPut)) {
		if time.Now().After(t.expires) {
			delete(g.transfers, token)
		}
		ok = false
	}
	if ok {
		t.inUse = true
	}
	g.mu.Unlock()
	if !ok {
		http.Error(w, "no such transfer", http.StatusNotFound)
		return
	}
	done := false
	defer func() {
		g.mu.Lock()
		if done {
			delete(g.transfers, token)
		} else {
			t.inUse = false
		}
		g.mu.Unlock()
	}()
	request := map[string]interface{}{"vm": t.vm, "user": t.user, "password": t.password, "path": t.path}
	if t.upload {
		data, err := io.ReadAll(io.LimitReader(r.Body, maxTransferBytes+1))
		if err != nil || int64(len(data)) > maxTransferBytes {
			http.Error(w, "the file is unreadable or larger than 1 MiB", http.StatusRequestEntityTooLarge)
			return
		}
		request["op"], request["overwrite"] = "write", t.overwrite
		request["data"] = base64.StdEncoding.EncodeToString(data)
	} else {
		request["op"] = "read"
	}
	lock := g.vmLock(t.vm)
	lock.Lock()
	answer, fault := g.ask(request)
	lock.Unlock()
	if fault != nil {
		status := http.StatusInternalServerError
		switch fault.(type) {
		case *types.FileNotFound:
			status = http.StatusNotFound
		case *types.InvalidGuestLogin, *types.GuestPermissionDenied:
			status = http.StatusForbidden
		case *types.FileAlreadyExists:
			status = http.StatusConflict
		}
		http.Error(w, "the guest refused the transfer", status)
		return
	}
	done = true
	if t.upload {
		w.WriteHeader(http.StatusOK)
		return
	}
	data, err := base64.StdEncoding.DecodeString(answer.Data)
	if err != nil {
		http.Error(w, "the lab's guest side answered malformed data", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	_, _ = w.Write(data)
}

// installGuestOps registers the lab's process and file managers under the references stock
// vcsim gave its own (the GuestOperationsManager's processManager and fileManager).
func (l *lab) installGuestOps() {
	si := simulator.Map.Get(vimServiceInstance).(*simulator.ServiceInstance)
	if si.Content.GuestOperationsManager == nil {
		return
	}
	gom, ok := simulator.Map.Get(*si.Content.GuestOperationsManager).(*simulator.GuestOperationsManager)
	if !ok {
		return
	}
	if ref := gom.ProcessManager; ref != nil {
		pm := &labProcessManager{ops: l.guestOps}
		pm.Self = *ref
		simulator.Map.Put(pm)
	}
	if ref := gom.FileManager; ref != nil {
		fm := &labFileManager{ops: l.guestOps}
		fm.Self = *ref
		simulator.Map.Put(fm)
	}
}

func isTransferPath(path string) bool {
	return strings.HasPrefix(path, transferPrefix)
}
