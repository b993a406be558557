package polymuxp2p

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/polymux/polymux"
)

// testTimeout bounds every wait of a test.
const testTimeout = 30 * time.Second

// tcpPair returns the two ends of a TCP connection on 127.0.0.1.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := l.Accept()
		ch <- accepted{c, err}
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a := <-ch
	if a.err != nil {
		client.Close()
		t.Fatal(a.err)
	}
	return client, a.c
}

// muxPair starts muxed connections on the two ends of a TCP connection:
// srvTr's as the server with srvScope, cliTr's as the client with
// cliScope. What the client writes arrives delay later, so that round
// trips are long enough for receive windows to grow even under the race
// detector. Both are closed when the test ends.
func muxPair(t *testing.T, srvTr, cliTr network.Multiplexer, srvScope, cliScope network.PeerScope, delay time.Duration) (srv, cli network.MuxedConn) {
	t.Helper()
	cc, sc := tcpPair(t)
	if delay > 0 {
		cc = newDelayConn(cc, delay)
	}
	type started struct {
		c   network.MuxedConn
		err error
	}
	ch := make(chan started, 1)
	go func() {
		c, err := srvTr.NewConn(sc, true, srvScope)
		ch <- started{c, err}
	}()
	cli, err := cliTr.NewConn(cc, false, cliScope)
	if err != nil {
		t.Fatal(err)
	}
	s := <-ch
	if s.err != nil {
		cli.Close()
		t.Fatal(s.err)
	}
	t.Cleanup(func() { closeAll(t, cli, s.c) })
	return s.c, cli
}

// closeAll closes every conn at once and waits for them, bounded: a
// polymux Close returns once its session has ended, and a muxer stuck on
// a lock would otherwise hold the test until the binary's timeout.
func closeAll(t *testing.T, conns ...network.MuxedConn) {
	t.Helper()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { c.Close() })
	}
	waitAll(t, &wg, "Close")
}

// delayConn is a net.Conn whose writes reach the peer d after Write
// returned, in order: a link with latency.
type delayConn struct {
	net.Conn
	d       time.Duration
	queue   chan delayed
	flushed chan struct{} // closed when the queue is written out or failed
	once    sync.Once
}

type delayed struct {
	data []byte
	due  time.Time
}

func newDelayConn(c net.Conn, d time.Duration) *delayConn {
	dc := &delayConn{Conn: c, d: d, queue: make(chan delayed, 1024), flushed: make(chan struct{})}
	go dc.deliver()
	return dc
}

func (c *delayConn) deliver() {
	defer close(c.flushed)
	t := time.NewTimer(0)
	defer t.Stop()
	for w := range c.queue {
		if wait := time.Until(w.due); wait > 0 {
			t.Reset(wait)
			<-t.C
		}
		if _, err := c.Conn.Write(w.data); err != nil {
			for range c.queue {
			}
			return
		}
	}
}

func (c *delayConn) Write(p []byte) (int, error) {
	c.queue <- delayed{append([]byte(nil), p...), time.Now().Add(c.d)}
	return len(p), nil
}

// Close delivers what was written, bounded, then closes: a muxer's
// completed Write promised that much.
func (c *delayConn) Close() error {
	c.once.Do(func() { close(c.queue) })
	select {
	case <-c.flushed:
	case <-time.After(testTimeout):
	}
	return c.Conn.Close()
}

// waitAll waits for wg, bounded: past the bound the test fails with every
// goroutine's stack, so a stuck muxer fails in seconds rather than hanging
// until the test binary's timeout. The streams' own deadlines cannot
// bound every wait, such as one on a lock.
func waitAll(t *testing.T, wg *sync.WaitGroup, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * testTimeout):
		buf := make([]byte, 1<<20)
		t.Fatalf("%s did not finish within %v; goroutines:\n%s", what, 2*testTimeout, buf[:runtime.Stack(buf, true)])
	}
}

// session is the polymux session under c, or nil if c is not polymux's.
func session(c network.MuxedConn) *polymux.Session {
	var s *polymux.Session
	if c.As(&s) {
		return s
	}
	return nil
}

// waitEnded waits, bounded, for the polymux session under c to end.
func waitEnded(t *testing.T, c network.MuxedConn) {
	t.Helper()
	s := session(c)
	if s == nil {
		return
	}
	select {
	case <-s.Done():
	case <-time.After(testTimeout):
		t.Fatal("the polymux session did not end")
	}
}

// opened opens a stream on opener and accepts it on acceptor, bounded.
func opened(t *testing.T, opener, acceptor network.MuxedConn) (a, b network.MuxedStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	a, err := opener.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The peer learns of a stream when its first frame arrives.
	if _, err := a.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	type accepted struct {
		s   network.MuxedStream
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		s, err := acceptor.AcceptStream()
		ch <- accepted{s, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		b = r.s
	case <-ctx.Done():
		t.Fatal("the peer did not accept the stream")
	}
	b.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := io.ReadFull(b, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	b.SetReadDeadline(time.Time{})
	return a, b
}

// writeRandom writes size pseudo-random bytes made from seed to w and
// returns their hash.
func writeRandom(w io.Writer, size int, seed uint64) ([32]byte, error) {
	h := sha256.New()
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	buf := make([]byte, 32<<10)
	for size > 0 {
		n := min(size, len(buf))
		for i := 0; i < n; i += 8 {
			v := r.Uint64()
			for j := 0; j < 8 && i+j < n; j++ {
				buf[i+j] = byte(v >> (8 * j))
			}
		}
		h.Write(buf[:n])
		if _, err := w.Write(buf[:n]); err != nil {
			return [32]byte{}, err
		}
		size -= n
	}
	return [32]byte(h.Sum(nil)), nil
}

// readHash reads r to its end and returns how much it read and its hash.
func readHash(r io.Reader) (int64, [32]byte, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return n, [32]byte(h.Sum(nil)), err
}

// meter is a resource scope whose spans count every reservation, so that
// a test sees what a muxer leaves behind: the suite's spans never touch
// their parent scope, so a scope's own totals cannot see a leak. It is
// strict where go-libp2p's resource manager is lenient: a span's Done
// must find everything already released, as polymux promises.
type meter struct {
	mu sync.Mutex
	// deny denies reservations at this priority or below; -1 denies none.
	deny     int
	spans    int // BeginSpan calls
	done     int // spans ended with Done
	reserves int // successful ReserveMemory calls
	denied   int
	releases int
	held     int // reserved and not released, across every span
	grown    int // bytes reserved at priority 128 (window growth)
	faults   []string
}

var _ network.PeerScope = (*meter)(nil)

func newMeter(deny int) *meter { return &meter{deny: deny} }

func (m *meter) fault(format string, args ...any) {
	m.faults = append(m.faults, fmt.Sprintf(format, args...))
}

// check fails the test unless every span ended, once, with nothing held,
// and nothing was used after its end.
func (m *meter) check(t *testing.T) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.held != 0 || m.done != m.spans || len(m.faults) > 0 {
		t.Fatalf("memory: %d spans, %d done, %d reserves, %d releases, %d bytes still held; faults: %q",
			m.spans, m.done, m.reserves, m.releases, m.held, m.faults)
	}
}

func (m *meter) counts() (spans, reserves, grown int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.spans, m.reserves, m.grown
}

func (m *meter) BeginSpan() (network.ResourceScopeSpan, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.spans++
	return &meterSpan{m: m}, nil
}

// The scope itself is never charged by a muxer: only its spans are.
func (m *meter) ReserveMemory(size int, _ uint8) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fault("ReserveMemory(%d) on the scope itself", size)
	return nil
}

func (m *meter) ReleaseMemory(size int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fault("ReleaseMemory(%d) on the scope itself", size)
}

func (m *meter) Stat() network.ScopeStat { return network.ScopeStat{} }
func (m *meter) Peer() peer.ID           { return "" }

// meterSpan is one stream's span of a meter.
type meterSpan struct {
	m    *meter
	held int
	done bool
}

var _ network.ResourceScopeSpan = (*meterSpan)(nil)

func (s *meterSpan) ReserveMemory(size int, prio uint8) error {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if s.done {
		m.fault("ReserveMemory(%d, %d) after Done", size, prio)
	}
	if size < 0 {
		m.fault("ReserveMemory(%d, %d): negative", size, prio)
	}
	if int(prio) <= m.deny {
		m.denied++
		return fmt.Errorf("meter: %d bytes at priority %d: %w", size, prio, network.ErrResourceLimitExceeded)
	}
	m.reserves++
	s.held += size
	m.held += size
	if prio == 128 {
		m.grown += size
	}
	return nil
}

func (s *meterSpan) ReleaseMemory(size int) {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if s.done {
		m.fault("ReleaseMemory(%d) after Done", size)
	}
	if size > s.held {
		m.fault("ReleaseMemory(%d) of a span holding %d", size, s.held)
	}
	m.releases++
	s.held -= size
	m.held -= size
}

func (s *meterSpan) Done() {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if s.done {
		m.fault("Done twice")
		return
	}
	s.done = true
	m.done++
}

func (s *meterSpan) Stat() network.ScopeStat { return network.ScopeStat{} }

func (s *meterSpan) BeginSpan() (network.ResourceScopeSpan, error) {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	s.m.fault("BeginSpan on a stream's span")
	return nil, network.ErrResourceScopeClosed
}
