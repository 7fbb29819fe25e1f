package main

// Model: a count of the API requests the lab's vCenter served, by session and method, for tests
// and the bench (issue 24: the deployer's requests per appliance stay below a constant).
//
// Not a vCenter behaviour, so no reference sentence: vCenter's own request accounting (its
// vpxd logs, the session's callCount) is not an API a test can rely on. The count is taken
// around the SOAP endpoint from the method element's name only: never a body (bodies carry
// passwords), and never vcsim's Trace option, which writes whole bodies. A request is counted
// under the session whose key its vmware_soap_session cookie carries (vcsim sets the cookie to
// the session's key, what SessionManager.currentSession.key reads through the API) while that
// session is logged in, else under "unauthenticated" (RetrieveServiceContent, Login, ...).

import (
	"net/http"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

type sessionCount struct {
	User    string         `json:"user"`
	Methods map[string]int `json:"methods"`
}

type requestCounter struct {
	mu              sync.Mutex
	sessions        map[string]*sessionCount
	unauthenticated map[string]int
}

func newRequestCounter() *requestCounter {
	return &requestCounter{sessions: map[string]*sessionCount{}, unauthenticated: map[string]int{}}
}

var sessionManagerRef = types.ManagedObjectReference{Type: "SessionManager", Value: "SessionManager"}

// loggedIn is the user of a logged-in session key, read from vcsim's session list (a session's
// view of the SessionManager lists every session: session_manager.go Session.Get).
func loggedIn(key string) (string, bool) {
	view := (&simulator.Session{Registry: simulator.NewRegistry()}).Get(sessionManagerRef)
	manager, ok := view.(*simulator.SessionManager)
	if !ok {
		return "", false
	}
	for _, session := range manager.SessionList {
		if session.Key == key {
			return session.UserName, true
		}
	}
	return "", false
}

func (c *requestCounter) count(r *http.Request, method string) {
	if method == "" {
		method = "(unparsed)"
	}
	if cookie, err := r.Cookie(soap.SessionCookieName); err == nil && cookie.Value != "" {
		if user, ok := loggedIn(cookie.Value); ok {
			c.mu.Lock()
			defer c.mu.Unlock()
			entry := c.sessions[cookie.Value]
			if entry == nil {
				entry = &sessionCount{User: user, Methods: map[string]int{}}
				c.sessions[cookie.Value] = entry
			}
			entry.Methods[method]++
			return
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.unauthenticated[method]++
}

func (c *requestCounter) snapshot() map[string]interface{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	sessions := map[string]sessionCount{}
	for key, entry := range c.sessions {
		methods := map[string]int{}
		for m, n := range entry.Methods {
			methods[m] = n
		}
		sessions[key] = sessionCount{User: entry.User, Methods: methods}
	}
	unauthenticated := map[string]int{}
	for m, n := range c.unauthenticated {
		unauthenticated[m] = n
	}
	return map[string]interface{}{"sessions": sessions, "unauthenticated": unauthenticated}
}
