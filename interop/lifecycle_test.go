package interop

import (
	"context"
	"errors"
	"testing"
	"time"

	goyamux "github.com/libp2p/go-yamux/v5"
	"github.com/polymux/polymux"
	"github.com/polymux/polymux/interop/internal/muxes"
)

// TestPing: yamux answers pings, so polymux pings the peer and the peer
// pings polymux, also while a transfer keeps the connection busy. smux
// (NOP, never answered) and muxado (no ping frame) have nothing to
// answer: polymux's Ping says errors.ErrUnsupported.
func TestPing(t *testing.T) {
	forEachCell(t, func(t *testing.T, c cell) {
		e := newEnv(t, c, muxes.Options{}, 30*time.Second)
		pm := e.pm()
		if c.peer.Protocol != polymux.Yamux {
			ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
			defer cancel()
			if _, err := pm.Ping(ctx); !errors.Is(err, errors.ErrUnsupported) {
				t.Fatalf("Ping on %v: %v, want errors.ErrUnsupported", c.peer.Protocol, err)
			}
			return
		}
		var peerPing func() (time.Duration, error)
		switch s := e.peer().Native().(type) {
		case interface{ Ping() (time.Duration, error) }:
			peerPing = s.Ping
		default:
			t.Fatalf("%T has no Ping", s)
		}
		ping := func(when string) {
			t.Helper()
			ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
			defer cancel()
			rtt, err := pm.Ping(ctx)
			if err != nil || rtt <= 0 {
				t.Errorf("polymux Ping %s: %v, %v", when, rtt, err)
			}
			rtt, err = peerPing()
			if err != nil || rtt <= 0 {
				t.Errorf("%s Ping %s: %v, %v", c.peer.Name, when, rtt, err)
			}
		}
		ping("on an idle session")
		// Again while both directions carry data.
		e.serveEcho(e.server)
		busy := make(chan struct{})
		go func() {
			defer close(busy)
			e.runEchoClients(e.client, 4, 8<<20)
		}()
		for range 5 {
			ping("during a transfer")
		}
		<-busy
		if rtt := pm.Stats().RTT; rtt <= 0 {
			t.Errorf("Stats().RTT = %v after pings", rtt)
		}
	})
}

// TestGoAway: where the protocol has GoAway (yamux, muxado), polymux's
// GoAway stops the peer from opening streams while the open ones carry on,
// and the peer's GoAway stops polymux. Documented exceptions, asserted:
//   - libp2p/go-yamux ends its whole session on any GoAway, code 0 too
//     (its recvLoop returns on GoAway; polymux documents it on GoAway).
//   - muxado's GoAway is unexported: it sends one only as it dies (Close),
//     so polymux sees the session end.
//   - smux has no GoAway frame: polymux's GoAway says
//     errors.ErrUnsupported and refuses (FIN) what the peer opens later.
func TestGoAway(t *testing.T) {
	forEachCell(t, func(t *testing.T, c cell) {
		t.Run("by-polymux", func(t *testing.T) {
			e := newEnv(t, c, muxes.Options{}, 30*time.Second)
			e.serveEcho(e.server)
			e.serveEcho(e.client)
			pm, peer := e.pm(), e.peer()
			s := e.open(peer)
			defer s.Close()
			if err := checkEcho(s, "before"); err != nil {
				t.Fatal(err)
			}
			err := pm.GoAway()
			switch c.peer.Protocol {
			case polymux.SmuxV1, polymux.SmuxV2:
				if !errors.Is(err, errors.ErrUnsupported) {
					t.Fatalf("GoAway on smux: %v, want errors.ErrUnsupported", err)
				}
			default:
				if err != nil {
					t.Fatalf("GoAway: %v", err)
				}
			}
			if c.peer.Name == muxes.GoYamux.Name {
				gy := peer.Native().(*goyamux.Session)
				select {
				case <-gy.CloseChan():
				case <-time.After(10 * time.Second):
					t.Fatal("go-yamux kept its session after GoAway(0); it documents closing it")
				}
				select {
				case <-pm.Done():
				case <-time.After(10 * time.Second):
					t.Fatal("polymux session still open after go-yamux closed the connection")
				}
				t.Logf("as documented, go-yamux closed its session on polymux's GoAway(0); polymux: %v", pm.Err())
				return
			}
			// The stream opened before goes on; its round trip also makes
			// sure the GoAway frame, sent before the echo, has arrived.
			if err := checkEcho(s, "after"); err != nil {
				t.Fatalf("stream opened before GoAway: %v", err)
			}
			// The peer can open no more streams.
			s2, err := peer.Open(e.ctx)
			switch c.peer.Protocol {
			case polymux.SmuxV1, polymux.SmuxV2:
				// smux opens without asking: polymux refuses with FIN.
				if err != nil {
					t.Fatalf("smux Open: %v", err)
				}
				defer s2.Close()
				s2.SetDeadline(time.Now().Add(2 * time.Second))
				if _, err := s2.Write([]byte("refused?")); err != nil {
					t.Fatalf("smux write: %v", err)
				}
				waitFor(t, "polymux to refuse the stream", func() bool { return pm.Stats().StreamsRefused >= 1 })
				// xtaci/smux v1.5.56 bug: OpenStream adds the stream to its
				// table only after its SYN is on the wire, so a FIN (or
				// data) the peer sends at once can be read first and
				// dropped as for an unknown stream. Then Read waits for
				// its deadline instead of reading io.EOF.
				var b [1]byte
				switch n, err := s2.Read(b[:]); {
				case isEOF(err):
				case isTimeout(err):
					t.Logf("xtaci/smux dropped polymux's refusal FIN: it arrived before smux's OpenStream registered the stream (smux open race)")
				default:
					t.Errorf("smux stream opened after polymux's GoAway: Read = %d, %v; want io.EOF (refused with FIN)", n, err)
				}
			default:
				if err == nil {
					s2.Close()
					t.Fatalf("%s opened a stream after polymux's GoAway", c.peer.Name)
				}
				t.Logf("%s Open after GoAway: %v", c.peer.Name, err)
			}
			ctx, cancel := context.WithTimeout(e.ctx, 200*time.Millisecond)
			defer cancel()
			if st, err := pm.AcceptStream(ctx); err == nil {
				t.Errorf("polymux accepted stream %d opened after its GoAway", st.ID())
			}
			// polymux itself may still open streams.
			s3 := e.open(e.pmSide())
			defer s3.Close()
			if err := checkEcho(s3, "polymux still opens"); err != nil {
				t.Fatalf("stream polymux opened after its own GoAway: %v", err)
			}
		})

		t.Run("by-peer", func(t *testing.T) {
			e := newEnv(t, c, muxes.Options{}, 30*time.Second)
			e.serveEcho(e.server)
			e.serveEcho(e.client)
			pm, peer := e.pm(), e.peer()
			s := e.open(e.pmSide())
			defer s.Close()
			if err := checkEcho(s, "before"); err != nil {
				t.Fatal(err)
			}
			var goAway func() error
			switch n := peer.Native().(type) {
			case interface{ GoAway() error }: // hashicorp, go-yamux
				goAway = n.GoAway
			default:
				switch c.peer.Protocol {
				case polymux.MuxadoV2:
					// Its GoAway is unexported; Close sends GOAWAY(0)
					// and closes the connection.
					peer.Close()
					select {
					case <-pm.Done():
					case <-time.After(10 * time.Second):
						t.Fatal("polymux session still open after muxado closed with GoAway")
					}
					if _, err := pm.OpenStream(e.ctx); !errors.Is(err, polymux.ErrSessionClosed) && !errors.Is(err, polymux.ErrGoAway) {
						t.Errorf("OpenStream after muxado's GoAway and close: %v", err)
					}
					return
				default:
					t.Skipf("%s has no GoAway", c.peer.Name)
				}
			}
			if err := goAway(); err != nil {
				t.Fatalf("%s GoAway: %v", c.peer.Name, err)
			}
			if err := checkEcho(s, "after"); err != nil {
				t.Fatalf("stream opened before the peer's GoAway: %v", err)
			}
			if st, err := pm.OpenStream(e.ctx); !errors.Is(err, polymux.ErrGoAway) {
				if err == nil {
					st.Close()
				}
				t.Fatalf("OpenStream after %s's GoAway: %v, want ErrGoAway", c.peer.Name, err)
			}
			// The peer still opens streams to polymux.
			s2 := e.open(peer)
			defer s2.Close()
			if err := checkEcho(s2, "peer still opens"); err != nil {
				t.Fatalf("stream %s opened after its own GoAway: %v", c.peer.Name, err)
			}
		})
	})
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
