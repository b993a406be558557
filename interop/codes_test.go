package interop

import (
	"errors"
	"testing"
	"time"

	goyamux "github.com/libp2p/go-yamux/v5"
	"github.com/polymux/polymux"
	"github.com/polymux/polymux/interop/internal/muxes"
	"golang.ngrok.com/muxado/v2"
)

// codeCells are the two cells of one peer library: polymux as the client,
// and as the server.
func codeCells(peer muxes.Lib) []cell { return []cell{{peer, true}, {peer, false}} }

// codePair is a fresh env for c with a stream opened by the client, and
// that stream's two ends: polymux's and the peer's.
func codePair(t *testing.T, c cell) (e *env, pm *polymux.Stream, peer muxes.Stream) {
	t.Helper()
	e = newEnv(t, c, muxes.Options{}, 30*time.Second)
	ost, ast := e.pair(e.client, e.server)
	pmEnd, peerEnd := ast, ost
	if c.polymuxClient {
		pmEnd, peerEnd = ost, ast
	}
	pmEnd.SetDeadline(time.Now().Add(10 * time.Second))
	peerEnd.SetDeadline(time.Now().Add(10 * time.Second))
	return e, pmEnd.(*polymux.Stream), peerEnd
}

// checkPeerReset fails unless err is polymux's error for a reset the peer
// sent with code.
func checkPeerReset(t *testing.T, what string, err error, code uint32) {
	t.Helper()
	var se *polymux.StreamError
	if !errors.As(err, &se) || se.Code != code || !se.Remote || !errors.Is(err, polymux.ErrStreamReset) {
		t.Fatalf("%s: %v, want a remote StreamError with code %#x", what, err, code)
	}
}

// checkPeerGoAway fails unless err is polymux's error for a session the
// peer ended with code.
func checkPeerGoAway(t *testing.T, what string, err error, code uint32) {
	t.Helper()
	var se *polymux.SessionError
	if !errors.As(err, &se) || se.Code != code || !se.Remote || !errors.Is(err, polymux.ErrGoAway) || !errors.Is(err, polymux.ErrSessionClosed) {
		t.Fatalf("%s: %v, want a remote SessionError with code %#x", what, err, code)
	}
}

// waitPolymuxEnded waits, bounded, for the polymux session of e to end.
func waitPolymuxEnded(t *testing.T, e *env) {
	t.Helper()
	select {
	case <-e.pm().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the polymux session did not end")
	}
}

func TestErrorCodesGoYamux(t *testing.T) {
	const code = 0xdead_beef
	for _, c := range codeCells(muxes.GoYamux) {
		t.Run(c.name(), func(t *testing.T) {
			t.Run("polymux-resets", func(t *testing.T) {
				_, pm, peer := codePair(t, c)
				if err := pm.ResetWithError(code); err != nil {
					t.Fatal(err)
				}
				_, err := peer.Read(make([]byte, 1))
				var se *goyamux.StreamError
				if !errors.As(err, &se) || se.ErrorCode != code || !se.Remote {
					t.Fatalf("go-yamux Read after polymux's reset: %v, want a remote StreamError with code %#x", err, code)
				}
			})
			t.Run("go-yamux-resets", func(t *testing.T) {
				_, pm, peer := codePair(t, c)
				if err := peer.(*goyamux.Stream).ResetWithError(code); err != nil {
					t.Fatal(err)
				}
				_, err := pm.Read(make([]byte, 1))
				checkPeerReset(t, "polymux Read after go-yamux's reset", err, code)
				_, err = pm.Write([]byte("x"))
				checkPeerReset(t, "polymux Write after go-yamux's reset", err, code)
			})
			t.Run("polymux-closes", func(t *testing.T) {
				e, _, peer := codePair(t, c)
				if err := e.pm().CloseWithError(code); err != nil {
					t.Fatal(err)
				}
				_, err := peer.Read(make([]byte, 1))
				var ge *goyamux.GoAwayError
				if !errors.As(err, &ge) || ge.ErrorCode != code || !ge.Remote {
					t.Fatalf("go-yamux Read after polymux's CloseWithError: %v, want a remote GoAwayError with code %#x", err, code)
				}
			})
			t.Run("go-yamux-closes", func(t *testing.T) {
				e, pm, _ := codePair(t, c)
				if err := e.peer().Native().(*goyamux.Session).CloseWithError(code); err != nil {
					t.Fatal(err)
				}
				_, err := pm.Read(make([]byte, 1))
				checkPeerGoAway(t, "polymux Read after go-yamux's CloseWithError", err, code)
				waitPolymuxEnded(t, e)
				checkPeerGoAway(t, "polymux Session.Err", e.pm().Err(), code)
			})
		})
	}
}

func TestErrorCodesMuxado(t *testing.T) {
	const code = 0x1234_5678
	for _, c := range codeCells(muxes.Muxado) {
		t.Run(c.name(), func(t *testing.T) {
			t.Run("polymux-resets", func(t *testing.T) {
				_, pm, peer := codePair(t, c)
				if err := pm.ResetWithError(code); err != nil {
					t.Fatal(err)
				}
				_, err := peer.Read(make([]byte, 1))
				if got, _ := muxado.GetError(err); got != code {
					t.Fatalf("muxado Read after polymux's reset: %v (code %#x), want code %#x", err, got, code)
				}
			})
			t.Run("muxado-resets", func(t *testing.T) {
				// muxado has no Reset method: the one reset it sends on its
				// own is for data arriving on a stream it closed.
				_, pm, peer := codePair(t, c)
				peer.Close()
				var err error
				for err == nil {
					_, err = pm.Write(make([]byte, 1024))
				}
				checkPeerReset(t, "polymux Write to a stream muxado closed", err, uint32(muxado.StreamClosed))
			})
			t.Run("polymux-closes", func(t *testing.T) {
				e, _, _ := codePair(t, c)
				ended := make(chan error, 1)
				go func() {
					_, remote, _ := e.peer().Native().(muxado.Session).Wait()
					ended <- remote
				}()
				if err := e.pm().CloseWithError(code); err != nil {
					t.Fatal(err)
				}
				select {
				case remote := <-ended:
					if got, _ := muxado.GetError(remote); got != code {
						t.Fatalf("muxado's remote error after polymux's CloseWithError: %v (code %#x), want code %#x", remote, got, code)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("the muxado session did not end")
				}
			})
			t.Run("muxado-goes-away", func(t *testing.T) {
				e, pm, _ := codePair(t, c)
				// GoAway is a method of muxado's session type, not of its
				// Session interface.
				ga := e.peer().Native().(interface {
					GoAway(muxado.ErrorCode, []byte, time.Time) error
				})
				if err := ga.GoAway(code, []byte("test"), time.Now().Add(10*time.Second)); err != nil {
					// muxado's GoAway waits for its writer's answer and for
					// the session's end in one select. polymux, told to go
					// away with a code, ends the session at once, so the
					// select may pick the end although the frame went out
					// (1 in 150 runs). Whether it went out is what polymux
					// read, checked below; any other error is a failure.
					if got, _ := muxado.GetError(err); got != muxado.SessionClosed {
						t.Fatal(err)
					}
				}
				_, err := pm.Read(make([]byte, 1))
				checkPeerGoAway(t, "polymux Read after muxado's GoAway", err, code)
				waitPolymuxEnded(t, e)
				checkPeerGoAway(t, "polymux Session.Err", e.pm().Err(), code)
			})
		})
	}
}
