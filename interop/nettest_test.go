package interop

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/polymux/polymux"
	"github.com/polymux/polymux/internal/loopback"
	"github.com/polymux/polymux/interop/internal/muxes"
	"golang.org/x/net/nettest"
)

// TestNetConn runs golang.org/x/net/nettest.TestConn on the two ends of a
// polymux stream, for every protocol, over TCP on 127.0.0.1 and over
// net.Pipe: a Stream must keep the whole net.Conn contract (deadlines,
// concurrent use, Close unblocking pending calls).
func TestNetConn(t *testing.T) {
	transports := []struct {
		name string
		pair func(t *testing.T) (net.Conn, net.Conn)
	}{
		{"tcp", func(t *testing.T) (net.Conn, net.Conn) { return loopback.MustTCPPair(t) }},
		{"pipe", func(*testing.T) (net.Conn, net.Conn) { return net.Pipe() }},
	}
	for _, p := range muxes.Protocols() {
		for _, tr := range transports {
			t.Run(p.String()+"/"+tr.name, func(t *testing.T) {
				checkLeaks(t)
				nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
					cc, sc := tr.pair(t)
					cfg := &polymux.Config{Protocol: p}
					client, err := polymux.Client(cc, cfg)
					if err != nil {
						return nil, nil, nil, err
					}
					server, err := polymux.Server(sc, cfg)
					if err != nil {
						client.Close()
						return nil, nil, nil, err
					}
					stop = func() {
						client.Close()
						server.Close()
					}
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					s1, err := client.OpenStream(ctx)
					if err != nil {
						stop()
						return nil, nil, nil, err
					}
					// The open reaches the server without any data: polymux
					// opens eagerly on every protocol, muxado included.
					s2, err := server.AcceptStream(ctx)
					if err != nil {
						stop()
						return nil, nil, nil, err
					}
					return s1, s2, stop, nil
				})
			})
		}
	}
}
