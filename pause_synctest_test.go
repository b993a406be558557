//go:build go1.25

package polymux

import (
	"io"
	"net"
	"testing"
	"testing/synctest"
	"time"
)

func TestAnSmuxPauseIsNotCountedAgainstThePeer(t *testing.T) {
	// An application stops accepting while its peer opens more streams
	// than the backlog holds: the read loop pauses. The pause is this
	// side's own choice, so neither keepalive nor WriteTimeout may end the
	// session, however long it lasts; once the application accepts, every
	// stream delivers. Over net.Pipe, which buffers nothing:
	//   - "one side": only the server pauses, its writer idle, so only
	//     its keepalive could end it (the client's timeouts are long, as
	//     its writes block on the paused server);
	//   - "both sides": both open, both pause, and both writers block,
	//     so only WriteTimeout could end them.
	short := &Config{AcceptBacklog: 2, KeepAliveInterval: time.Second, KeepAliveTimeout: time.Second, WriteTimeout: time.Second}
	long := &Config{AcceptBacklog: 2, KeepAliveInterval: time.Hour, KeepAliveTimeout: time.Hour, WriteTimeout: time.Hour}
	cases := []struct {
		name     string
		cli, srv *Config
		openers  func(cli, srv *Session) []*Session
	}{
		{"one side", long, short, func(cli, _ *Session) []*Session { return []*Session{cli} }},
		{"both sides", short, short, func(cli, srv *Session) []*Session { return []*Session{cli, srv} }},
	}
	for _, proto := range []Protocol{SmuxV1, SmuxV2} {
		for _, c := range cases {
			t.Run(proto.String()+"/"+c.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					cliCfg, srvCfg := *c.cli, *c.srv
					cliCfg.Protocol, srvCfg.Protocol = proto, proto
					c1, c2 := net.Pipe()
					cli, err := Client(c1, &cliCfg)
					if err != nil {
						t.Fatal(err)
					}
					srv, err := Server(c2, &srvCfg)
					if err != nil {
						t.Fatal(err)
					}
					const n = 5
					openers := c.openers(cli, srv)
					for _, s := range openers {
						for range n {
							st, err := s.OpenStream(t.Context())
							if err != nil {
								t.Fatal(err)
							}
							if _, err := st.Write([]byte{byte(st.ID())}); err != nil {
								t.Fatal(err)
							}
							st.CloseWrite()
						}
					}
					synctest.Wait()
					peerOf := map[*Session]*Session{cli: srv, srv: cli}
					for _, s := range openers {
						if !peerOf[s].paused.Load() {
							t.Fatal("the accepting side did not pause at its backlog")
						}
					}
					time.Sleep(time.Minute) // sixty times every short timeout
					synctest.Wait()
					if cli.IsClosed() || srv.IsClosed() {
						t.Fatalf("a paused session ended: client %v, server %v", cli.Err(), srv.Err())
					}
					for _, s := range openers {
						acceptor := peerOf[s]
						for range n {
							st, err := acceptor.AcceptStream(t.Context())
							if err != nil {
								t.Fatal(err)
							}
							b, err := io.ReadAll(st)
							if err != nil || len(b) != 1 || b[0] != byte(st.ID()) {
								t.Fatalf("stream %d: %v, %v", st.ID(), b, err)
							}
							st.Close()
						}
					}
					if cli.paused.Load() || srv.paused.Load() {
						t.Fatal("a session still paused after every stream was accepted")
					}
					cli.Close()
					srv.Close()
				})
			})
		}
	}
}
