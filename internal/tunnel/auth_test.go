package tunnel

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"testing"
	"time"
)

// tlsPair is both ends of a TLS 1.3 connection over loopback TCP, the
// client trusting the server's key by pin.
func tlsPair(t *testing.T) (client, server *tls.Conn) {
	t.Helper()
	cert := testCert(t)
	c, s := loopbackPair(t)
	server = tls.Server(s, ServerTLSConfig(cert))
	client = tls.Client(c, (&Trust{Fingerprint: Fingerprint(cert.Leaf)}).TLSConfig())
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return client, server
}

// recorder keeps a copy of everything written through it.
type recorder struct {
	io.ReadWriter
	written bytes.Buffer
}

func (r *recorder) Write(p []byte) (int, error) {
	r.written.Write(p)
	return r.ReadWriter.Write(p)
}

// runAuth runs both halves of the exchange, the client's through rec.
func runAuth(t *testing.T, c, s *tls.Conn, clientToken, serverToken []byte, wait time.Duration) (id string, rec *recorder, clientErr, serverErr error) {
	t.Helper()
	type result struct {
		id  string
		err error
	}
	srv := make(chan result, 1)
	go func() {
		id, err := serverAuth(s, s.ConnectionState(), serverToken, func() time.Duration { return wait })
		srv <- result{id, err}
	}()
	rec = &recorder{ReadWriter: c}
	clientErr = clientAuth(rec, c.ConnectionState(), clientToken, "client-1")
	r := <-srv
	return r.id, rec, clientErr, r.err
}

func TestAuthAcceptsTheTokenWithoutSendingIt(t *testing.T) {
	c, s := tlsPair(t)
	token := []byte("correct horse battery staple")
	id, rec, cerr, serr := runAuth(t, c, s, token, token, 0)
	if cerr != nil || serr != nil || id != "client-1" {
		t.Fatalf("client %v, server %v, id %q", cerr, serr, id)
	}
	if bytes.Contains(rec.written.Bytes(), token) || bytes.Contains(rec.written.Bytes(), []byte("horse")) {
		t.Errorf("the token crossed the wire: %q", rec.written.Bytes())
	}
}

func TestAuthRefusesAWrongToken(t *testing.T) {
	c, s := tlsPair(t)
	_, _, cerr, serr := runAuth(t, c, s, []byte("wrong"), []byte("right"), 0)
	if !errors.Is(cerr, ErrAuthFailed) || !errors.Is(serr, ErrAuthFailed) {
		t.Errorf("client %v, server %v; want ErrAuthFailed on both", cerr, serr)
	}
}

func TestAuthTellsAThrottledClientWhenToRetry(t *testing.T) {
	c, s := tlsPair(t)
	_, _, cerr, serr := runAuth(t, c, s, []byte("right"), []byte("right"), 3*time.Second)
	var th *ThrottledError
	if !errors.As(cerr, &th) || th.RetryAfter != 3*time.Second {
		t.Errorf("client %v, want a ThrottledError of 3s", cerr)
	}
	if !errors.As(serr, &th) {
		t.Errorf("server %v, want a ThrottledError", serr)
	}
}

// TestAuthCannotBeRelayed puts a relay between client and server that
// terminates TLS on both sides (the client trusts it: a compromised CA,
// say) and passes every message on unchanged. The two TLS sessions have
// different bindings, so the client's proof fails at the server even
// though the token is right.
func TestAuthCannotBeRelayed(t *testing.T) {
	relayCert := testCert(t)
	serverCert := testCert(t)
	cc, rc := loopbackPair(t) // client to relay
	rs, sc := loopbackPair(t) // relay to server
	token := []byte("shared")
	srv := make(chan error, 1)
	go func() {
		s := tls.Server(sc, ServerTLSConfig(serverCert))
		_, err := serverAuth(s, handshaken(s).ConnectionState(), token, func() time.Duration { return 0 })
		srv <- err
	}()
	go func() {
		toClient := tls.Server(rc, ServerTLSConfig(relayCert))
		toServer := tls.Client(rs, (&Trust{Fingerprint: Fingerprint(serverCert.Leaf)}).TLSConfig())
		handshaken(toClient)
		handshaken(toServer)
		go io.Copy(toServer, toClient)
		io.Copy(toClient, toServer)
	}()
	c := tls.Client(cc, (&Trust{Fingerprint: Fingerprint(relayCert.Leaf)}).TLSConfig())
	cerr := clientAuth(c, handshaken(c).ConnectionState(), token, "victim")
	if serr := <-srv; !errors.Is(serr, ErrAuthFailed) {
		t.Errorf("server accepted a relayed proof: %v", serr)
	}
	if !errors.Is(cerr, ErrAuthFailed) {
		t.Errorf("client: %v, want ErrAuthFailed", cerr)
	}
}

// handshaken completes c's handshake (errors surface in the next read).
func handshaken(c *tls.Conn) *tls.Conn {
	c.Handshake()
	return c
}

func TestServerAuthRefusesJunk(t *testing.T) {
	for name, send := range map[string][]byte{
		"not json":      {0, 3, 'a', 'b', 'c'},
		"wrong type":    append([]byte{0, 15}, `{"type":"auth"}`...),
		"wrong version": append([]byte{0, 28}, `{"type":"hello","version":9}`...),
		"short":         {0, 50, '{'},
	} {
		t.Run(name, func(t *testing.T) {
			c, s := tlsPair(t)
			go func() { c.Write(send); c.Close() }()
			s.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := serverAuth(s, s.ConnectionState(), []byte("x"), func() time.Duration { return 0 }); err == nil {
				t.Error("accepted")
			}
		})
	}
}
