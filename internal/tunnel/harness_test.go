package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/polymux/polymux/internal/loopback"
)

// fastTimeouts keep in-process tests quick: heartbeats every 50 ms, a
// dead peer noticed within 300 ms.
var fastTimeouts = Timeouts{Auth: 5 * time.Second, Heartbeat: 50 * time.Millisecond, HeartbeatTimeout: 300 * time.Millisecond, Dial: 5 * time.Second, Write: 2 * time.Second}

// logBuffer is a slog handler's output that tests can wait on.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newLogBuffer() *logBuffer { return &logBuffer{changed: make(chan struct{})} }

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	close(l.changed)
	l.changed = make(chan struct{})
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// wait waits until the log holds n lines containing every one of parts.
func (l *logBuffer) wait(t testing.TB, n int, parts ...string) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		got := countLines(l.buf.String(), parts)
		ch := l.changed
		l.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("no %d log lines with %q within 10 s; log:\n%s", n, parts, l.String())
		}
	}
}

// countLines counts the lines of s containing every one of parts.
func countLines(s string, parts []string) int {
	n := 0
	for _, line := range strings.Split(s, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all && line != "" {
			n++
		}
	}
	return n
}

// logger logs into l: at debug level in tests, at the command's default
// (info) in benchmarks, whose per-connection debug lines would be measured.
func (l *logBuffer) logger(t testing.TB) *slog.Logger {
	level := slog.LevelDebug
	if _, bench := t.(*testing.B); bench {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: level}))
}

// newServer starts a server with cfg's zero fields filled in.
func newServer(t testing.TB, cfg ServerConfig) (*Server, string, string, *logBuffer) {
	t.Helper()
	cert, _, err := LoadOrCreateIdentity(t.TempDir(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TLS == nil {
		cfg.TLS = ServerTLSConfig(cert)
	}
	if cfg.Token == nil {
		cfg.Token = []byte("s3cret")
	}
	if cfg.Timeouts == (Timeouts{}) {
		cfg.Timeouts = fastTimeouts
	}
	lb := newLogBuffer()
	cfg.Logger = lb.logger(t).With("side", "server")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", lb.String())
		}
	})
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Drain(ctx)
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv, ln.Addr().String(), Fingerprint(cert.Leaf), lb
}

// runner is a client's Run in the background.
type runner struct {
	t      testing.TB
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Run's, once done is closed
}

// stop ends Run's context and returns what Run returned.
func (r *runner) stop() error {
	r.cancel()
	return r.wait()
}

// wait waits for Run to return by itself, at most 10 s.
func (r *runner) wait() error {
	r.t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(10 * time.Second):
		r.t.Fatal("client Run did not return within 10 s")
		return nil
	}
}

// startClient starts a client of addr with cfg's zero fields filled in;
// it is drained when the test ends.
func startClient(t testing.TB, addr, fp string, cfg ClientConfig) (*Client, *logBuffer, *runner) {
	t.Helper()
	cfg.Server = addr
	if cfg.Trust == nil {
		cfg.Trust = &Trust{Fingerprint: fp}
	}
	if cfg.Token == nil {
		cfg.Token = []byte("s3cret")
	}
	if cfg.Timeouts == (Timeouts{}) {
		cfg.Timeouts = fastTimeouts
	}
	if cfg.Backoff.Min == 0 {
		cfg.Backoff = Backoff{Min: 20 * time.Millisecond, Max: 100 * time.Millisecond}
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 2 * time.Second
	}
	lb := newLogBuffer()
	cfg.Logger = lb.logger(t).With("side", "client")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("client log:\n%s", lb.String())
		}
	})
	cli, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{t: t, cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = cli.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(func() { r.stop() })
	return cli, lb, r
}

// echoServer listens on 127.0.0.1 and echoes every connection.
func echoServer(t testing.TB) string {
	t.Helper()
	return echoServerOn(t, "127.0.0.1:0")
}

// echoServerOn listens on addr and echoes every connection, passing the
// client's half-close on.
func echoServerOn(t testing.TB, addr string) string {
	t.Helper()
	return serveTCP(t, addr, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
}

// serveTCP listens on addr until the test ends and runs handle on every
// connection in its own goroutine, closing the connection afterwards.
func serveTCP(t testing.TB, addr string, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// echoThrough dials addr, writes n bytes, half-closes and checks the echo.
func echoThrough(t testing.TB, addr string, n int) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i * 7)
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if err := <-werr; err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("echo differs: got %d bytes, want %d", len(got), n)
	}
	return nil
}

// itoa formats a port.
func itoa(n int) string { return fmt.Sprint(n) }

// testCert is a fresh server identity.
func testCert(t testing.TB) tls.Certificate {
	t.Helper()
	cert, _, err := LoadOrCreateIdentity(t.TempDir(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// loopbackPair is a TCP pair on 127.0.0.1, closed when the test ends.
func loopbackPair(t testing.TB) (net.Conn, net.Conn) {
	c, s := loopback.MustTCPPair(t)
	t.Cleanup(func() { c.Close(); s.Close() })
	// Every read and write on the pair is bounded: a broken exchange fails
	// the test instead of hanging it.
	c.SetDeadline(time.Now().Add(e2eWait))
	s.SetDeadline(time.Now().Add(e2eWait))
	return c, s
}

// value returns the value of key in the first log line containing every
// one of parts, waiting for such a line.
func (l *logBuffer) value(t testing.TB, key string, parts ...string) string {
	t.Helper()
	l.wait(t, 1, parts...)
	for _, line := range strings.Split(l.String(), "\n") {
		if countLines(line, parts) == 1 {
			for _, f := range strings.Fields(line) {
				if v, ok := strings.CutPrefix(f, key+"="); ok {
					return strings.Trim(v, `"`)
				}
			}
		}
	}
	t.Fatalf("no %s= in the line with %q", key, parts)
	return ""
}

// proxy is a TCP relay between a client and a server that a test can
// cut (every connection reset) or turn into a black hole (bytes stop,
// connections stay open, as on a dead path or with a hung peer).
type proxy struct {
	ln      net.Listener
	mu      sync.Mutex // guards target, links, holeNew and closed
	target  string
	links   []*link
	holeNew bool // new connections start blocked
	closed  bool // the test is over: connections still arriving are closed
}

// link is one connection through the proxy, both sides.
type link struct {
	a, b net.Conn
	mu   sync.Mutex    // guards gate
	gate chan struct{} // closed: bytes flow
}

// wait returns once bytes may flow.
func (l *link) wait() {
	l.mu.Lock()
	g := l.gate
	l.mu.Unlock()
	<-g
}

// block holds the link's bytes until release.
func (l *link) block() {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.gate:
		l.gate = make(chan struct{})
	default:
	}
}

// release lets bytes flow.
func (l *link) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.gate:
	default:
		close(l.gate)
	}
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.cut()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			target := p.target
			p.mu.Unlock()
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			l := &link{a: c, b: up, gate: make(chan struct{})}
			p.mu.Lock()
			if p.closed {
				p.mu.Unlock()
				c.Close()
				up.Close()
				continue
			}
			if !p.holeNew {
				close(l.gate)
			}
			p.links = append(p.links, l)
			p.mu.Unlock()
			go l.pump(c, up)
			go l.pump(up, c)
		}
	}()
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

// pump copies src to dst, holding bytes while the link is blocked.
func (l *link) pump(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		l.wait()
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// cut resets every connection through the proxy.
func (p *proxy) cut() {
	p.mu.Lock()
	links := p.links
	p.links = nil
	p.mu.Unlock()
	for _, l := range links {
		for _, c := range []net.Conn{l.a, l.b} {
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
		l.release() // the pumps see the closed connections and end
	}
}

// blackhole stops every byte through the proxy, on the connections open
// now and on new ones, until heal.
func (p *proxy) blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holeNew = true
	for _, l := range p.links {
		l.block()
	}
}

// heal lets new connections through again. The held ones stay held, as a
// dead path never comes back for the connections it broke: only the far
// end's own timeout ends them.
func (p *proxy) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holeNew = false
}

// redirect sends new connections to target.
func (p *proxy) redirect(target string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = target
}

// socksDial connects to target through the SOCKS5 proxy at proxyAddr, as
// a minimal RFC 1928 client: no authentication, CONNECT, the target as an
// IPv4 or IPv6 address or as a domain name. It returns the reply code
// alongside the connection (nil unless the code is 0).
func socksDial(proxyAddr, target string) (net.Conn, byte, error) {
	c, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
	if err != nil {
		return nil, 0, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	host, portStr, err := net.SplitHostPort(target)
	if err != nil {
		c.Close()
		return nil, 0, err
	}
	var port uint16
	fmt.Sscan(portStr, &port)
	req := []byte{5, 1, 0, 5, 1, 0}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Is4() {
		req = append(append(req, socksIPv4), ip.AsSlice()...)
	} else if err == nil {
		req = append(append(req, socksIPv6), ip.AsSlice()...)
	} else {
		req = append(append(req, socksDomain, byte(len(host))), host...)
	}
	req = append(req, byte(port>>8), byte(port))
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, 0, err
	}
	reply := make([]byte, 2)
	if _, err := io.ReadFull(c, reply); err != nil || reply[0] != 5 || reply[1] != 0 {
		c.Close()
		return nil, 0, fmt.Errorf("method reply %v, %v", reply, err)
	}
	head := make([]byte, 4)
	if _, err := io.ReadFull(c, head); err != nil {
		c.Close()
		return nil, 0, fmt.Errorf("reply: %v", err)
	}
	addrLen := map[byte]int{socksIPv4: 4, socksIPv6: 16}[head[3]]
	if _, err := io.ReadFull(c, make([]byte, addrLen+2)); err != nil {
		c.Close()
		return nil, head[1], fmt.Errorf("reply address: %v", err)
	}
	if head[1] != socksOK {
		c.Close()
		return nil, head[1], nil
	}
	c.SetDeadline(time.Time{})
	return c, 0, nil
}

// pinnedTLS wraps c in TLS trusting key fp.
func pinnedTLS(c net.Conn, fp string) *tls.Conn {
	return tls.Client(c, (&Trust{Fingerprint: fp}).TLSConfig())
}

// within receives from ch, failing the test if nothing comes within
// e2eWait: what names the event awaited.
func within[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(e2eWait):
		t.Fatalf("no %s within %v", what, e2eWait)
		var zero T
		return zero
	}
}
