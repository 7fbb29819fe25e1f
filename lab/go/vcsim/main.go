// The lab's vCenter: govmomi's vCenter simulator (vcsim) with the VPX inventory, built from
// Debian's golang-github-vmware-govmomi-dev by lab/vcsim.py and run as one process per lab.
//
// Flags name only what is not secret: the listen address and the TLS certificate and key files.
// The credentials come from FIRSTTRUST_VCSIM_USER and FIRSTTRUST_VCSIM_PASSWORD in the
// environment, never argv (any local user can read another process's argv in /proc).
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
	flag.Parse()

	user, password := os.Getenv("FIRSTTRUST_VCSIM_USER"), os.Getenv("FIRSTTRUST_VCSIM_PASSWORD")
	if user == "" || password == "" {
		fail("FIRSTTRUST_VCSIM_USER and FIRSTTRUST_VCSIM_PASSWORD must be set")
	}
	os.Unsetenv("FIRSTTRUST_VCSIM_PASSWORD")

	model := simulator.VPX()
	if err := model.Create(); err != nil {
		fail("creating the inventory: %v", err)
	}
	defer model.Remove()
	modelPropertyCollector()

	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(user, password)}
	if *certFile != "" {
		pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fail("loading the TLS certificate: %v", err)
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	}
	server := model.Service.NewServer()
	defer server.Close()

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
