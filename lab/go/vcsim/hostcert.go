package main

// Every host's config.certificate: "The host's SSL certificate, in PEM format"
// (HostConfigInfo.certificate, xsd:byte[]), here the certificate the simulator serves HTTPS and
// guest file transfers with (guestops.go), so a client can verify a transfer against the host
// it reads it from, as the reference asks: "In order to ensure a secure connection to the host
// when transferring a file using HTTPS, the X.509 certificate for the host must be used to
// authenticate the remote end of the connection."
//
// vcsim 0.24 leaves it unset, and its XML encoder would write a []byte as one text element,
// while the WSDL's xsd:byte[] is one element per (signed) byte, as pyVmomi reads it. So the
// hosts hold a marker, and the property-reading methods' answers have it replaced by the
// certificate's bytes in the WSDL's form (handler.go).

import (
	"bytes"
	"net/http"
	"strconv"

	"github.com/vmware/govmomi/simulator"
)

var hostCertMarker = []byte("firsttrust-lab-host-certificate-marker")

// setHostCertificates gives every host the marker and remembers the certificate's PEM.
func (l *lab) setHostCertificates(pem []byte) {
	l.hostCertPEM = pem
	for _, e := range simulator.Map.All("HostSystem") {
		host, ok := e.(*simulator.HostSystem)
		if !ok || host.Config == nil {
			continue
		}
		simulator.Map.WithLock(host, func() {
			config := *host.Config
			config.Certificate = append([]byte(nil), hostCertMarker...)
			host.Config = &config
		})
	}
}

// propertyMethods answer with property values (a host's config among them).
var propertyMethods = map[string]bool{
	"RetrieveProperties": true, "RetrievePropertiesEx": true, "ContinueRetrievePropertiesEx": true,
	"WaitForUpdatesEx": true, "WaitForUpdates": true, "CheckForUpdates": true,
	"Fetch": true, // pyVmomi's property access (host.config) on a simulator
}

// expandHostCertificate replaces the marker in a SOAP answer: as a field of HostConfigInfo
// (<certificate>MARKER</certificate>, one element per byte) and as a property value of its own
// (<val xsi:type="...">MARKER</val> or Fetch's <returnval ...>, an ArrayOfByte).
func (l *lab) expandHostCertificate(body []byte) []byte {
	if len(l.hostCertPEM) == 0 || !bytes.Contains(body, hostCertMarker) {
		return body
	}
	var elements, items bytes.Buffer
	for _, b := range l.hostCertPEM {
		value := strconv.Itoa(int(int8(b)))
		elements.WriteString("<certificate>" + value + "</certificate>")
		items.WriteString("<byte>" + value + "</byte>")
	}
	out := bytes.ReplaceAll(body, []byte("<certificate>"+string(hostCertMarker)+"</certificate>"), elements.Bytes())
	for {
		at := bytes.Index(out, hostCertMarker)
		if at < 0 {
			return out
		}
		end := at + len(hostCertMarker)
		element := ""
		for _, name := range []string{"val", "returnval"} {
			if bytes.HasPrefix(out[end:], []byte("</"+name+">")) {
				element = name
			}
		}
		start := bytes.LastIndex(out[:at], []byte("<"+element+" "))
		if element == "" || start < 0 {
			return out // not a form the lab knows: left as it is
		}
		replacement := append([]byte(`<`+element+` xsi:type="ArrayOfByte">`), items.Bytes()...)
		out = append(append(append([]byte(nil), out[:start]...), replacement...), out[end:]...)
	}
}

// bufferedResponse holds an answer until it is rewritten.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header         { return b.header }
func (b *bufferedResponse) Write(p []byte) (int, error) { return b.body.Write(p) }
func (b *bufferedResponse) WriteHeader(status int)      { b.status = status }

// serveRewritten serves a SOAP call with its answer rewritten by rewrite.
func (l *lab) serveRewritten(w http.ResponseWriter, r *http.Request, inner http.Handler, rewrite func([]byte) []byte) {
	// Uncompressed, so the answer can be read here (vcsim gzips for a client that accepts it).
	r.Header.Del("Accept-Encoding")
	buffered := &bufferedResponse{header: w.Header(), status: http.StatusOK}
	inner.ServeHTTP(buffered, r)
	out := rewrite(buffered.body.Bytes())
	w.Header().Del("Content-Length")
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.WriteHeader(buffered.status)
	_, _ = w.Write(out)
}
