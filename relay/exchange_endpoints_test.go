package relay

import (
	"testing"
	"time"

	"holdfast/relay/destination"
	"holdfast/relay/upstream"
)

// TestRouteEndpointsRoom: a route is leased by the endpoints its apps send
// through: a Graph route is not held by a dead SMTP endpoint nor an SMTP
// route by a dead Graph, a route of both apps is leased while either
// works, and a dead token endpoint holds every route.
func TestRouteEndpointsRoom(t *testing.T) {
	eps := newRouteEndpoints([]App{
		{Name: "a", Credential: "smtponly"},
		{Name: "b", Credential: "graphonly", Via: "graph"},
		{Name: "c", Credential: "both", Via: "smtp"},
		{Name: "d", Credential: "both", Via: "graph"},
	})
	kill := func(s *destination.Set, ep string) {
		for range 3 {
			done, err := s.Allow(ep)
			if err != nil {
				t.Fatalf("%s: %v", ep, err)
			}
			done(&upstream.Error{Class: upstream.Transient, Text: "refused"})
		}
	}
	type want struct {
		delegated bool
		cred      string
		room      int
	}
	for _, tc := range []struct {
		name string
		dead []string
		want []want
	}{
		{"all alive", nil, []want{{false, "smtponly", -1}, {false, "graphonly", -1}, {false, "both", -1}, {true, "smtponly", -1}}},
		// A delegated route goes by SMTP whatever its apps' via.
		{"SMTP dead", []string{destination.SMTP}, []want{{false, "smtponly", 0}, {false, "graphonly", -1}, {false, "both", -1}, {true, "graphonly", 0}, {false, "unnamed", 0}}},
		{"Graph dead", []string{destination.Graph}, []want{{false, "smtponly", -1}, {false, "graphonly", 0}, {false, "both", -1}, {true, "graphonly", -1}}},
		{"both dead", []string{destination.SMTP, destination.Graph}, []want{{false, "both", 0}, {true, "smtponly", 0}}},
		{"token dead", []string{destination.Token}, []want{{false, "smtponly", 0}, {false, "graphonly", 0}, {true, "both", 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := destination.New(destination.Options{ProbeInterval: time.Hour})
			for _, ep := range tc.dead {
				kill(s, ep)
			}
			for _, w := range tc.want {
				room, wait := eps.room(s, w.delegated, w.cred)
				if room != w.room {
					t.Errorf("route of %s (delegated %v): room %d, want %d", w.cred, w.delegated, room, w.room)
				}
				if room == 0 && (wait <= 0 || wait > time.Hour) {
					t.Errorf("route of %s (delegated %v): wait %v with no room", w.cred, w.delegated, wait)
				}
			}
		})
	}
}
