// The lab's vCenter: govmomi's vCenter simulator (vcsim) with the VPX inventory, built from
// Debian's golang-github-vmware-govmomi-dev by lab/vcsim.py (every .go file of this directory,
// package main) and run as one process per lab.
//
// On top of stock vcsim 0.24 the program models, where the product relies on them, behaviours the
// vSphere Web Services API reference states for vCenter and vcsim does not follow; each model
// lives in its own file and quotes the reference sentence it follows:
//
//	vapp.go        vApp properties kept on import, clone and reconfigure; password values write-only
//	importspec.go  CreateImportSpec: ProductSection properties as vApp properties, vmw:Config firmware
//	extraconfig.go extraConfig: a key set to "" removed, an existing key replaced
//	ovfenv.go      the OVF environment built at power-on, given to the guest only (guestinfo.ovfEnv)
//	drs.go         clusters honour drsConfig.enabled; placement without a host refused without DRS
//	datastore.go   a lab-only switch for a datastore's accessible / maintenanceMode
//	requests.go    a count of the API requests served, by session and method (never a body)
//	collector.go   a new PropertyCollector filter's state reported by the next WaitForUpdatesEx
//	guestops.go    guest operations (process and file managers) on the lab's appliances
//	hostcert.go    every host's config.certificate: the certificate guest file transfers are served with
//	control.go     the lab's own control endpoints under /firsttrust-lab/ (not vCenter's)
//
// and how they hook into vcsim: lab.go (the lab's state; only VMs are wrapped, see why there),
// vm.go (the VM wrapper's methods), handler.go (the HTTP handler around vcsim's: the control
// endpoints, the count, and SOAP-level hooks for methods of objects that cannot be wrapped).
//
// With -stock every model is off and the binary behaves as stock vcsim 0.24 (the tests run both
// and show each model changes something); the control endpoints still answer (they are the lab's
// guest channel), with stock's guest view.
//
// Flags name only what is not secret: the listen address, the TLS certificate and key files and
// the switches. The credentials come from FIRSTTRUST_VCSIM_USER and FIRSTTRUST_VCSIM_PASSWORD,
// the control endpoints' bearer token from FIRSTTRUST_VCSIM_LAB_TOKEN, in the environment, never
// argv (any local user can read another process's argv in /proc); the secrets are unset once read.
//
// Once it listens it prints one JSON line on stdout, {"url": "https://127.0.0.1:PORT/sdk"}, so
// the caller learns the port the kernel picked for -listen 127.0.0.1:0. It exits on SIGTERM or
// SIGINT, and when its stdin reaches end of file: the lab holds the write end of that pipe, so
// a lab that dies, even by SIGKILL, leaves no simulator behind.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "vcsim: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "host:port to listen on (port 0: any free port)")
	certFile := flag.String("cert", "", "PEM certificate for https (plain http without it)")
	keyFile := flag.String("key", "", "PEM private key of -cert")
	stock := flag.Bool("stock", false, "turn every model off: behave as stock vcsim 0.24")
	setPrivate := flag.Bool("guestinfo-set-private", false,
		"a guestinfo value the guest sets is visible to the guest only, not in config.extraConfig")
	guestSocket := flag.String("guest-ops-socket", "",
		"the lab's guest side of guest operations (a Unix socket; none: guest operations unavailable)")
	flag.Parse()

	user, password := os.Getenv("FIRSTTRUST_VCSIM_USER"), os.Getenv("FIRSTTRUST_VCSIM_PASSWORD")
	token := os.Getenv("FIRSTTRUST_VCSIM_LAB_TOKEN")
	if user == "" || password == "" || token == "" {
		fail("FIRSTTRUST_VCSIM_USER, FIRSTTRUST_VCSIM_PASSWORD and FIRSTTRUST_VCSIM_LAB_TOKEN must be set")
	}
	os.Unsetenv("FIRSTTRUST_VCSIM_PASSWORD")
	os.Unsetenv("FIRSTTRUST_VCSIM_LAB_TOKEN")

	model := simulator.VPX()
	if err := model.Create(); err != nil {
		fail("creating the inventory: %v", err)
	}
	defer model.Remove()

	lab := newLab(*stock, *setPrivate)
	lab.guestOps = newGuestOps(*guestSocket)
	if !lab.stock {
		lab.installModels()
		lab.installGuestOps()
	}

	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(user, password)}
	if *certFile != "" {
		pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fail("loading the TLS certificate: %v", err)
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
		if !lab.stock {
			certPEM, err := os.ReadFile(*certFile)
			if err != nil {
				fail("reading the TLS certificate: %v", err)
			}
			lab.setHostCertificates(certPEM)
		}
	}
	server := model.Service.NewServer()
	defer server.Close()

	// The simulator's mux is complete only once NewServer has registered its endpoints, and
	// NewServer starts serving before it returns, so the lab's handler (the control endpoints,
	// the request count and the SOAP-level models, see handler.go) wraps it here. Safe: the
	// listener's port is known to nobody until the ready line below is printed, and net/http
	// reads Server.Handler per request, so no request is being served while it is replaced.
	lab.guestOps.port = server.URL.Port()
	server.Config.Handler = lab.handler(server.Config.Handler, token)

	public := *server.URL
	public.User = nil
	if err := json.NewEncoder(os.Stdout).Encode(map[string]string{"url": public.String()}); err != nil {
		fail("writing the ready line: %v", err)
	}

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	orphaned := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(orphaned)
	}()
	select {
	case <-signals:
	case <-orphaned:
	}
}
