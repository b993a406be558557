package polymux

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/polymux/polymux/internal/wire"
)

func TestAutoServerDetectsEachProtocol(t *testing.T) {
	for _, p := range protocols {
		for _, tr := range transports {
			t.Run(p.String()+"/"+tr.name, func(t *testing.T) {
				checkLeaks(t)
				e := env{p, tr}
				cli, srv := e.pair(t, nil, &Config{Protocol: Auto})
				if got := srv.Protocol(); got != Auto {
					t.Fatalf("Protocol() before the client spoke = %v, want auto", got)
				}
				a, b := openAccept(t, cli, srv)
				if got := srv.Protocol(); got != p {
					t.Fatalf("detected %v, want %v", got, p)
				}
				if got := srv.Stats().Protocol; got != p {
					t.Fatalf("Stats().Protocol = %v, want %v", got, p)
				}
				go echo(b)
				if err := roundTrip(a, randomBytes(100<<10)); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

func TestAutoServerOpenStreamWaitsForDetection(t *testing.T) {
	checkLeaks(t)
	e := env{SmuxV2, transports[1]}
	cli, srv := e.pair(t, nil, &Config{Protocol: Auto})
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := srv.OpenStream(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("OpenStream before detection: %v, want the context's deadline", err)
	}
	opened := make(chan *Stream, 1)
	go func() {
		st, err := srv.OpenStream(ctx(t))
		if err != nil {
			t.Error(err)
		}
		opened <- st
	}()
	a, _ := openAccept(t, cli, srv) // the client speaks first
	defer a.Close()
	st := <-opened
	b, err := cli.AcceptStream(ctx(t))
	if err != nil || b.ID() != st.ID() || st.ID()%2 != 0 {
		t.Fatalf("server-opened stream %v accepted as %v (%v)", st, b, err)
	}
}

func TestAutoServerDetectsALargeFirstMuxadoFrame(t *testing.T) {
	checkLeaks(t)
	c1, c2 := net.Pipe()
	srv, err := Server(c2, &Config{Protocol: Auto})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	defer c1.Close()
	// muxado opens lazily: its SYN rides on the first data, here 100 KiB,
	// so the frame's first byte is not zero.
	payload := randomBytes(100 << 10)
	hdr, err := wire.Muxado().AppendFrame(nil, wire.Frame{Type: wire.TypeData, Flags: wire.FlagSYN, Stream: 3, Length: uint32(len(payload))})
	if err != nil {
		t.Fatal(err)
	}
	go c1.Write(append(hdr, payload...))
	go io.Copy(io.Discard, c1)
	st, err := srv.AcceptStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(st, got); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("reading the first frame: %v", err)
	}
	if srv.Protocol() != MuxadoV2 {
		t.Fatalf("detected %v", srv.Protocol())
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writes (log output).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestListenerServesEveryProtocolOnOnePort(t *testing.T) {
	checkLeaks(t)
	ln, err := Listen("tcp", "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	clientsDone := make(chan struct{})
	served := make(chan Protocol, len(protocols))
	wg.Add(1)
	go func() {
		defer wg.Done()
		var sessions []*Session
		defer func() {
			for _, s := range sessions {
				s.Close()
			}
		}()
		for range protocols {
			s, err := ln.Accept()
			if err != nil {
				t.Error(err)
				return
			}
			sessions = append(sessions, s)
			served <- s.Protocol()
			st, err := s.AcceptStream(ctx(t))
			if err != nil {
				t.Error(err)
				return
			}
			go echo(st)
		}
		// Keep the sessions open until every client is done.
		<-clientsDone
	}()
	var clients sync.WaitGroup
	for _, p := range protocols {
		clients.Add(1)
		go func() {
			defer clients.Done()
			s, err := Dial("tcp", ln.Addr().String(), &Config{Protocol: p})
			if err != nil {
				t.Error(err)
				return
			}
			defer s.Close()
			st, err := s.OpenStream(ctx(t))
			if err != nil {
				t.Error(err)
				return
			}
			if err := roundTrip(st, randomBytes(64<<10)); err != nil {
				t.Errorf("%v: %v", p, err)
			}
		}()
	}
	clients.Wait()
	close(clientsDone)
	wg.Wait()
	seen := map[Protocol]bool{}
	for range protocols {
		seen[<-served] = true
	}
	for _, p := range protocols {
		if !seen[p] {
			t.Errorf("no session detected as %v (saw %v)", p, seen)
		}
	}
	ln.Close()
}

func TestListenerBadClientsNeverDelayGoodOnes(t *testing.T) {
	checkLeaks(t)
	var logs syncBuffer
	cfg := &Config{
		Protocol:      Auto,
		DetectTimeout: 500 * time.Millisecond,
		Logger:        slog.New(slog.NewTextHandler(&logs, nil)),
	}
	ln, err := Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dial := func(first []byte) net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if len(first) > 0 {
			if _, err := c.Write(first); err != nil {
				t.Fatal(err)
			}
		}
		return c
	}
	garbage := dial([]byte{0x16, 0x03, 0x01, 0x02, 0x00}) // a TLS ClientHello
	silent := dial(nil)
	stalled := dial([]byte{0x00}) // one byte, then nothing
	good, err := Dial("tcp", ln.Addr().String(), &Config{Protocol: Yamux})
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	if _, err := good.OpenStream(ctx(t)); err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Protocol() != Yamux {
		t.Fatalf("accepted %v", s.Protocol())
	}
	// The good client was served while the slow ones were still waiting.
	for name, c := range map[string]net.Conn{"silent": silent, "stalled": stalled} {
		c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("%s connection already ended (%v) before its DetectTimeout", name, err)
		}
	}
	// Every bad connection is closed: garbage at once, the others after
	// DetectTimeout.
	for name, c := range map[string]net.Conn{"garbage": garbage, "silent": silent, "stalled": stalled} {
		expectClosed(t, name, c, 5*time.Second)
	}
	if !strings.Contains(logs.String(), "unknown protocol: first bytes 16 03 01 02") {
		t.Fatalf("garbage not reported in the log:\n%s", logs.String())
	}
}

// expectClosed waits, up to d, for the server to close c. The server
// closes a connection with bytes it did not read (peeked, or sent after
// the first ones) with a reset, which counts as closed too.
func expectClosed(t testing.TB, name string, c net.Conn, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("%s connection not closed by the server: %v", name, err)
	}
}

func TestListenerCloseEndsSessionsNotYetAccepted(t *testing.T) {
	checkLeaks(t)
	ln, err := Listen("tcp", "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	silent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	ready, err := Dial("tcp", ln.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ready.Close()
	if _, err := ready.OpenStream(ctx(t)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	within(t, 5*time.Second, "Listener.Close", func() { ln.Close() })
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	select {
	case <-ready.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a session waiting for Accept survived Listener.Close")
	}
	expectClosed(t, "a connection still detecting at Listener.Close", silent, 5*time.Second)
}

func TestListenerRejectsAnInvalidConfig(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := NewListener(inner, &Config{MaxFrameSize: 1})
	defer ln.Close()
	if _, err := ln.Accept(); err == nil || !strings.Contains(err.Error(), "MaxFrameSize") {
		t.Fatalf("Accept with an invalid config: %v", err)
	}
	if _, err := Listen("tcp", "127.0.0.1:0", &Config{AcceptBacklog: -1}); err == nil {
		t.Fatal("Listen accepted a negative AcceptBacklog")
	}
	if _, err := Listen("tcp", "127.0.0.1:0", &Config{MaxDetecting: -1}); err == nil || !strings.Contains(err.Error(), "MaxDetecting") {
		t.Fatalf("Listen with a negative MaxDetecting: %v", err)
	}
}

func TestDialAndListenOverTLS(t *testing.T) {
	checkLeaks(t)
	cert := selfSigned(t)
	ln, err := ListenTLS("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		s, err := ln.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		st, err := s.AcceptStream(ctx(t))
		if err != nil {
			return
		}
		echo(st)
		<-s.Done()
	}()
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	s, err := DialTLS("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.OpenStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(st, randomBytes(200<<10)); err != nil {
		t.Fatal(err)
	}
}

func TestDialContextHonoursItsContext(t *testing.T) {
	c, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := DialContext(c, "tcp", "127.0.0.1:1", nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("DialContext with a cancelled context: %v", err)
	}
}

// selfSigned returns a certificate for 127.0.0.1.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "polymux test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// listenerState is what a Listener holds: pending connections, sessions
// ready for Accept, connections evicted so far, and whether accepting is
// paused.
func listenerState(l *Listener) (pending, ready int, evicted uint64, paused bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nPending, len(l.ready), l.evicted.Load(), l.paused
}

// tlsRecordStart is the start of a ClientHello record: a TLS client that
// dribbles it never gets to the end.
var tlsRecordStart = []byte{0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03}

// yamuxPing is a whole yamux ping frame: a client that sends it first is
// detected at once.
var yamuxPing = []byte{0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1}

func TestListenerDropsSlowClientsAtDetectTimeout(t *testing.T) {
	checkLeaks(t)
	// One byte a second: more than DetectLen seconds to detect, but less
	// than DetectTimeout between bytes, so only a deadline counted from
	// accept (not from the last byte) drops the client.
	const detect = 1500 * time.Millisecond
	cert := selfSigned(t)
	cases := []struct {
		name  string
		tls   bool
		proto Protocol
		first []byte
	}{
		{"tcp/auto", false, Auto, yamuxPing},
		{"tls/auto", true, Auto, tlsRecordStart},
		{"tls/explicit_protocol", true, Yamux, tlsRecordStart},
	}
	var wg sync.WaitGroup
	for _, tc := range cases {
		cfg := &Config{Protocol: tc.proto, DetectTimeout: detect}
		var ln *Listener
		var err error
		if tc.tls {
			ln, err = ListenTLS("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}}, cfg)
		} else {
			ln, err = Listen("tcp", "127.0.0.1:0", cfg)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		wg.Add(2)
		go func() {
			defer wg.Done()
			for {
				s, err := ln.Accept()
				if err != nil {
					return
				}
				t.Errorf("%s: a client that sent one byte a second was served (%v) instead of dropped at DetectTimeout", tc.name, s.Protocol())
				s.Close()
			}
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() {
			defer wg.Done()
			// The client's clock starts once the server holds the
			// connection, so the server's deadline is no later than ours.
			for giveUp := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
				if pending, _, _, _ := listenerState(ln); pending == 1 {
					break
				}
				if time.Now().After(giveUp) {
					t.Errorf("%s: the listener did not accept the client within 5 s", tc.name)
					ln.Close()
					return
				}
			}
			start := time.Now()
			closed := make(chan struct{})
			go func() {
				defer close(closed)
				c.SetReadDeadline(time.Now().Add(detect + 10*time.Second))
				io.Copy(io.Discard, c)
			}()
			sent := 0
		dribbling:
			for _, b := range tc.first {
				if _, err := c.Write([]byte{b}); err != nil {
					break
				}
				sent++
				select {
				case <-closed:
					break dribbling
				case <-time.After(time.Second):
				}
			}
			<-closed
			took := time.Since(start)
			t.Logf("%s: dropped after %v, %d bytes sent", tc.name, took.Round(time.Millisecond), sent)
			if took > detect+5*time.Second {
				t.Errorf("%s: dropped after %v, DetectTimeout %v", tc.name, took, detect)
			}
			if pending, _, _, _ := listenerState(ln); pending != 0 {
				t.Errorf("%s: %d connections still pending after the drop", tc.name, pending)
			}
			ln.Close()
		}()
	}
	wg.Wait()
}

// clientTLS is a client configuration that trusts cert.
func clientTLS(cert tls.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
}

// exhaustedListener fails its first Accepts as a process out of file
// descriptors does, then accepts as inner does.
type exhaustedListener struct {
	net.Listener
	failures atomic.Int32
}

func (l *exhaustedListener) Accept() (net.Conn, error) {
	if l.failures.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

func TestListenerKeepsAcceptingAfterRunningOutOfFileDescriptors(t *testing.T) {
	checkLeaks(t)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ex := &exhaustedListener{Listener: inner}
	ex.failures.Store(3)
	ln := NewListener(ex, &Config{Protocol: Yamux})
	defer ln.Close()
	cli, err := Dial("tcp", inner.Addr().String(), &Config{Protocol: Yamux})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	accepted := make(chan error, 1)
	go func() {
		s, err := ln.Accept()
		if err == nil {
			s.Close()
		}
		accepted <- err
	}()
	select {
	case err := <-accepted:
		if err != nil {
			t.Fatalf("Accept after EMFILE: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the Listener stopped accepting after EMFILE")
	}
}

func TestCloseReturnsWhileATLSHandshakeHangs(t *testing.T) {
	// A server session on a TLS connection whose client never says
	// hello: its read loop sits in the handshake, and a write waits for
	// it, which no write deadline can cut short. Close still returns
	// within its linger.
	checkLeaks(t)
	c1, c2 := net.Pipe()
	defer c1.Close()
	tc := tls.Server(c2, &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}})
	s, err := Server(tc, &Config{Protocol: Yamux, CloseLinger: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	within(t, 5*time.Second, "Close", func() { s.Close() })
}
