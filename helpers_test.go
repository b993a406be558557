package polymux

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/polymux/polymux/internal/loopback"
	"github.com/polymux/polymux/internal/wire"
)

// checkLeaks fails the test if goroutines started during it are still
// running shortly after it ends. Call it first, so its cleanup runs last.
func checkLeaks(t testing.TB) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Fatalf("goroutine leak: %d before, %d after\n%s", before, n, buf)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// transport makes a connected pair of connections.
type transport struct {
	name string
	pair func(t testing.TB) (net.Conn, net.Conn)
}

var transports = []transport{
	{"pipe", func(testing.TB) (net.Conn, net.Conn) { return net.Pipe() }},
	{"tcp", func(t testing.TB) (net.Conn, net.Conn) { return loopback.MustTCPPair(t) }},
}

// protocols lists the protocols every session test runs over.
var protocols = []Protocol{Yamux, SmuxV1, SmuxV2, MuxadoV2}

// env is one combination a session test runs in.
type env struct {
	proto Protocol
	tr    transport
}

// forEach runs f as a subtest for every protocol and transport, each with
// a leak check.
func forEach(t *testing.T, f func(t *testing.T, e env)) {
	for _, p := range protocols {
		for _, tr := range transports {
			t.Run(p.String()+"/"+tr.name, func(t *testing.T) {
				checkLeaks(t)
				f(t, env{p, tr})
			})
		}
	}
}

// caps returns the capabilities of the environment's protocol.
func (e env) caps() *wire.Caps {
	c, err := codecFor(e.proto)
	if err != nil {
		panic(err)
	}
	return c.Caps()
}

// cfg returns a config for the environment's protocol, adjusted by mod.
func (e env) cfg(mod func(*Config)) *Config {
	c := &Config{Protocol: e.proto}
	if mod != nil {
		mod(c)
	}
	return c
}

// pair starts a client and a server session over a new connection pair;
// both are closed when the test ends.
func (e env) pair(t testing.TB, cli, srv *Config) (*Session, *Session) {
	t.Helper()
	if cli == nil {
		cli = e.cfg(nil)
	}
	if srv == nil {
		srv = e.cfg(nil)
	}
	c1, c2 := e.tr.pair(t)
	return sessionsOver(t, c1, c2, cli, srv)
}

// sessionsOver starts a client session on c1 and a server session on c2;
// both are closed when the test ends.
func sessionsOver(t testing.TB, c1, c2 net.Conn, cli, srv *Config) (*Session, *Session) {
	t.Helper()
	c, err := Client(c1, cli)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Server(c2, srv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		s.Close()
	})
	return c, s
}

// ctx returns a context that ends with the test, bounded to 30 s.
func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// openAccept opens a stream on a and accepts it on b.
func openAccept(t testing.TB, a, b *Session) (*Stream, *Stream) {
	t.Helper()
	sa, err := a.OpenStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	// Some protocols announce a stream only when it carries data or its
	// SYN; every protocol here sends the SYN at open.
	sb, err := b.AcceptStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if sa.ID() != sb.ID() {
		t.Fatalf("opened stream %d, accepted %d", sa.ID(), sb.ID())
	}
	return sa, sb
}

// randomBytes returns n random bytes.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// echo copies everything st receives back to it, then closes it.
func echo(st *Stream) {
	io.Copy(st, st)
	st.CloseWrite()
}

// acceptLoop accepts streams on s and runs handle on each in its own
// goroutine until the session ends. It returns a function that waits for
// the loop and the handlers to end.
func acceptLoop(s *Session, handle func(*Stream)) (wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		var handlers []chan struct{}
		defer func() {
			for _, h := range handlers {
				<-h
			}
		}()
		for {
			st, err := s.AcceptStream(context.Background())
			if err != nil {
				return
			}
			h := make(chan struct{})
			handlers = append(handlers, h)
			go func() {
				defer close(h)
				handle(st)
			}()
		}
	}()
	return func() { <-done }
}

// roundTrip writes data on st, half-closes, reads the reply to EOF and
// checks it equals data by hash.
func roundTrip(st *Stream, data []byte) error {
	errc := make(chan error, 1)
	go func() {
		_, err := st.Write(data)
		if err == nil {
			err = st.CloseWrite()
		}
		errc <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, st)
	if werr := <-errc; werr != nil {
		return werr
	}
	if err != nil {
		return err
	}
	if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("echo differs from what was sent: %d bytes back of %d", n, len(data))
	}
	return nil
}

// within fails the test unless f returns before d passes.
func within(t testing.TB, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
	}
}

// eventually polls cond until it holds, failing the test after d.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rawPeer is a hand-driven peer speaking a protocol frame by frame.
type rawPeer struct {
	t     testing.TB
	conn  net.Conn
	codec wire.Codec
	br    *bufio.Reader
}

// newRawPeer returns a session of proto on one end of a pipe (as server
// when server is set) and a raw peer on the other end.
func newRawPeer(t testing.TB, proto Protocol, server bool, cfg *Config) (*Session, *rawPeer) {
	t.Helper()
	c1, c2 := net.Pipe()
	if cfg == nil {
		cfg = &Config{}
	}
	cfg.Protocol = proto
	var s *Session
	var err error
	if server {
		s, err = Server(c1, cfg)
	} else {
		s, err = Client(c1, cfg)
	}
	if err != nil {
		t.Fatal(err)
	}
	codec, err := codecFor(proto)
	if err != nil {
		t.Fatal(err)
	}
	p := &rawPeer{t: t, conn: c2, codec: codec, br: bufio.NewReader(c2)}
	t.Cleanup(func() {
		s.Close()
		c2.Close()
	})
	return s, p
}

// send writes a frame followed by payload. It may run on any goroutine;
// an unencodable frame is reported with t.Error. The write error is
// returned: a session that rejects a frame may close before reading all.
func (p *rawPeer) send(f wire.Frame, payload []byte) error {
	b, err := p.codec.AppendFrame(nil, f)
	if err != nil {
		p.t.Error(err)
		return err
	}
	return p.sendRaw(append(b, payload...))
}

// sendRaw writes bytes as they are, within 5 s.
func (p *rawPeer) sendRaw(b []byte) error {
	p.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := p.conn.Write(b)
	return err
}

// next reads the next frame (skipping DATA payloads into the returned
// slice), failing the test after 5 s.
func (p *rawPeer) next() (wire.Frame, []byte, error) {
	p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := p.codec.ReadFrame(p.br)
	if err != nil {
		return f, nil, err
	}
	var payload []byte
	if f.Type == wire.TypeData && f.Length > 0 {
		payload = make([]byte, f.Length)
		if _, err := io.ReadFull(p.br, payload); err != nil {
			return f, nil, err
		}
	}
	return f, payload, nil
}

// expect reads frames until one satisfies match, failing the test at EOF
// or after 5 s.
func (p *rawPeer) expect(what string, match func(wire.Frame) bool) wire.Frame {
	p.t.Helper()
	for {
		f, _, err := p.next()
		if err != nil {
			p.t.Fatalf("waiting for %s: %v", what, err)
		}
		if match(f) {
			return f
		}
	}
}

// fillUntilBlocked writes to st until a write cannot complete within
// 100 ms: the window, or the connection, is full.
func fillUntilBlocked(t testing.TB, st *Stream) int {
	t.Helper()
	total := 0
	buf := make([]byte, 256<<10)
	for range 1024 {
		st.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := st.Write(buf)
		total += n
		if errors.Is(err, ErrTimeout) {
			st.SetWriteDeadline(time.Time{})
			return total
		}
		if err != nil {
			t.Fatalf("filling stream %d: %v", st.ID(), err)
		}
	}
	t.Fatalf("stream %d accepted %d bytes without blocking", st.ID(), total)
	return 0
}

// drain reads and discards everything until the connection ends.
func (p *rawPeer) drain() {
	go io.Copy(io.Discard, p.conn)
}

// takeWriterTurn waits for s's writer to park and takes its turn: the test
// is then the writer, and fills and flushes batches itself (w.b, w.top,
// w.flush). The returned function hands the turn back, once, releasing the
// batch and starting a writer for whatever is queued; it also runs at the
// test's end.
func takeWriterTurn(t *testing.T, s *Session) (handBack func()) {
	t.Helper()
	q, w := &s.w.sched, &s.w
	eventually(t, 5*time.Second, "the writer to park", func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		if q.running {
			return false
		}
		q.running = true // the test is the writer now
		return true
	})
	var once sync.Once
	handBack = func() {
		once.Do(func() {
			w.b.release()
			q.mu.Lock()
			q.running = false
			q.kick()
			q.mu.Unlock()
		})
	}
	t.Cleanup(handBack)
	return handBack
}
