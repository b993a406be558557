package polymuxp2p

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// ends names the two muxed connections of a pair by role.
func ends(srv, cli network.MuxedConn, who string) (this, peer network.MuxedConn) {
	if who == "server" {
		return srv, cli
	}
	return cli, srv
}

func TestAResetCodeCrossesTheWire(t *testing.T) {
	const code = network.StreamErrorCode(0x1234_5678)
	for _, p := range pairings() {
		for _, resetter := range []string{"server", "client"} {
			t.Run(p.name+"/reset-by-the-"+resetter, func(t *testing.T) {
				srv, cli := muxPair(t, p.server, p.client, nil, nil, 0)
				this, peer := ends(srv, cli, resetter)
				// The peer opens, so that both a stream this side opened
				// and one it accepted are covered across the cases.
				b, a := opened(t, peer, this)
				if err := a.ResetWithError(code); err != nil {
					t.Fatal(err)
				}
				b.SetDeadline(time.Now().Add(testTimeout))
				_, err := b.Read(make([]byte, 1))
				checkStreamError(t, "the peer's Read", err, code, true)
				// A Write fails too once the reset has arrived.
				_, err = b.Write([]byte("x"))
				checkStreamError(t, "the peer's Write after the reset", err, code, true)
				_, err = a.Write([]byte("x"))
				checkStreamError(t, "this side's Write", err, code, false)
			})
		}
	}
}

func checkStreamError(t *testing.T, what string, err error, code network.StreamErrorCode, remote bool) {
	t.Helper()
	var se *network.StreamError
	if !errors.As(err, &se) || se.ErrorCode != code || se.Remote != remote || !errors.Is(err, network.ErrReset) {
		t.Fatalf("%s: %v, want a network.StreamError with code %#x, remote %v, matching network.ErrReset", what, err, code, remote)
	}
}

func TestACloseCodeCrossesTheWire(t *testing.T) {
	const code = network.ConnErrorCode(0x4242)
	for _, p := range pairings() {
		for _, closer := range []string{"server", "client"} {
			t.Run(p.name+"/closed-by-the-"+closer, func(t *testing.T) {
				srv, cli := muxPair(t, p.server, p.client, nil, nil, 0)
				this, peer := ends(srv, cli, closer)
				a, b := opened(t, this, peer)
				accepted := make(chan error, 1)
				go func() {
					_, err := peer.AcceptStream()
					accepted <- err
				}()
				if err := this.CloseWithError(code); err != nil {
					t.Fatal(err)
				}
				b.SetDeadline(time.Now().Add(testTimeout))
				_, err := b.Read(make([]byte, 1))
				checkConnError(t, "the peer's Read", err, code, true)
				select {
				case err := <-accepted:
					checkConnError(t, "the peer's AcceptStream", err, code, true)
				case <-time.After(testTimeout):
					t.Fatal("the peer's AcceptStream did not return")
				}
				_, err = a.Write([]byte("x"))
				checkConnError(t, "this side's Write", err, code, false)
				ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
				defer cancel()
				if _, err := this.OpenStream(ctx); err == nil {
					t.Fatal("OpenStream after CloseWithError succeeded")
				}
				if !this.IsClosed() {
					t.Fatal("IsClosed is false after CloseWithError")
				}
			})
		}
	}
}

func checkConnError(t *testing.T, what string, err error, code network.ConnErrorCode, remote bool) {
	t.Helper()
	var ce *network.ConnError
	if !errors.As(err, &ce) || ce.ErrorCode != code || ce.Remote != remote {
		t.Fatalf("%s: %v, want a network.ConnError with code %#x, remote %v", what, err, code, remote)
	}
}
