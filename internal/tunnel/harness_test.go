package tunnel

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
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

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newServer starts a server with cfg's zero fields filled in.
func newServer(t *testing.T, cfg ServerConfig) (*Server, string, string, *logBuffer) {
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
	cfg.Logger = lb.logger().With("side", "server")
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

// startClient starts a client of addr with cfg's zero fields filled in;
// it is drained when the test ends.
func startClient(t *testing.T, addr, fp string, cfg ClientConfig) (*Client, *logBuffer, func() error) {
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
	cfg.Logger = lb.logger().With("side", "client")
	cli, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- cli.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-errc:
			case <-time.After(10 * time.Second):
				t.Errorf("client Run did not return within 10 s of its context ending")
			}
		})
		return runErr
	}
	t.Cleanup(func() { stop() })
	return cli, lb, stop
}

// echoServer listens on 127.0.0.1 and echoes every connection, passing
// the client's half-close on.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
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
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
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
