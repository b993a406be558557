package polymux

// Connection faults: a net.Conn wrapper injects EOF mid-frame, write
// errors, short writes, stalls and resets at chosen byte offsets while
// streams move data both ways. Every blocked call must wake with an error
// within a bounded time, no goroutine may leak, and a byte a Write
// reported as written is either delivered or its stream reports an error:
// never silently dropped while reported as sent.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/polymux/polymux/internal/loopback"
)

// faultKind is what a faultConn does at its offset.
type faultKind int

const (
	// faultEOF: reads end with io.EOF once at bytes have been read.
	faultEOF faultKind = iota
	// faultWriteError: the write that reaches at bytes writes up to there
	// and fails.
	faultWriteError
	// faultShortWrite: the write that reaches at bytes writes up to there
	// and returns that count with no error, breaking io.Writer's contract
	// as a buggy connection wrapper would. Later writes work.
	faultShortWrite
	// faultStall: once at bytes have been written, nothing moves either
	// way (a partition): calls block until their deadline or Close.
	faultStall
	// faultReadStall: once at bytes have been read, nothing more arrives
	// (the peer fell silent); writes go on.
	faultReadStall
	// faultReset: the write that reaches at bytes writes up to there and
	// the connection is reset (RST); every later call fails.
	faultReset
)

func (k faultKind) String() string {
	return [...]string{"EOF mid-frame", "write error", "short write", "stall", "read stall", "reset"}[k]
}

var errInjected = errors.New("injected write error")

// faultConn wraps a connection and injects one fault at a byte offset.
type faultConn struct {
	net.Conn
	kind      faultKind
	at        int64
	fired     chan struct{}
	fireOnce  sync.Once
	closed    chan struct{}
	closeOnce sync.Once

	mu       sync.Mutex
	rn, wn   int64 // bytes read and written
	rdl, wdl time.Time
}

func newFaultConn(c net.Conn, kind faultKind, at int64) *faultConn {
	return &faultConn{Conn: c, kind: kind, at: at, fired: make(chan struct{}), closed: make(chan struct{})}
}

func (c *faultConn) fire() { c.fireOnce.Do(func() { close(c.fired) }) }

func (c *faultConn) hit() bool { return isClosed(c.fired) }

// block waits, as a stuck connection does, until the call's deadline
// passes or the connection is closed.
func (c *faultConn) block(write bool) error {
	for {
		c.mu.Lock()
		dl := c.rdl
		if write {
			dl = c.wdl
		}
		c.mu.Unlock()
		if !dl.IsZero() && !time.Now().Before(dl) {
			return os.ErrDeadlineExceeded
		}
		select {
		case <-c.closed:
			return net.ErrClosed
		case <-time.After(2 * time.Millisecond):
		}
	}
}

var errReset = &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}

// reset aborts the connection with a TCP RST.
func (c *faultConn) reset() {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Conn.Close()
}

func (c *faultConn) Read(p []byte) (int, error) {
	switch {
	case c.kind == faultEOF:
		c.mu.Lock()
		left := c.at - c.rn
		c.mu.Unlock()
		if left <= 0 {
			c.fire()
			return 0, io.EOF
		}
		p = p[:min(int64(len(p)), left)]
	case c.hit() && (c.kind == faultStall || c.kind == faultReadStall):
		return 0, c.block(false)
	case c.hit() && c.kind == faultReset:
		return 0, errReset
	}
	n, err := c.Conn.Read(p)
	if c.hit() && (c.kind == faultStall || c.kind == faultReadStall) {
		return 0, c.block(false) // lost in the partition
	}
	if c.hit() && c.kind == faultReset {
		return 0, errReset
	}
	c.mu.Lock()
	c.rn += int64(n)
	if c.kind == faultReadStall && c.rn >= c.at {
		c.fire()
	}
	c.mu.Unlock()
	return n, err
}

func (c *faultConn) Write(p []byte) (int, error) {
	if c.kind == faultEOF || c.kind == faultReadStall {
		return c.Conn.Write(p)
	}
	if c.hit() {
		switch c.kind {
		case faultStall:
			return 0, c.block(true)
		case faultReset:
			return 0, errReset
		case faultWriteError:
			return 0, errInjected
		}
		return c.Conn.Write(p)
	}
	c.mu.Lock()
	off := c.wn
	c.mu.Unlock()
	if off+int64(len(p)) <= c.at {
		n, err := c.Conn.Write(p)
		c.mu.Lock()
		c.wn += int64(n)
		c.mu.Unlock()
		return n, err
	}
	n, err := c.Conn.Write(p[:c.at-off])
	c.mu.Lock()
	c.wn += int64(n)
	c.mu.Unlock()
	c.fire()
	if err != nil {
		return n, err
	}
	switch c.kind {
	case faultWriteError:
		return n, errInjected
	case faultShortWrite:
		return n, nil
	case faultStall:
		return n, c.block(true)
	default: // faultReset
		c.reset()
		return n, errReset
	}
}

func (c *faultConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func (c *faultConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

func (c *faultConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.rdl = t
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

func (c *faultConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.wdl = t
	c.mu.Unlock()
	return c.Conn.SetWriteDeadline(t)
}

// faultByte is byte off of stream id's data, in both directions (the
// server echoes it).
func faultByte(id uint32, off int) byte { return byte(int(id)*13 + off*7 + off>>9) }

// flowResult is one direction of one stream: how many bytes the writer's
// Writes reported, whether it closed its side cleanly, how many bytes the
// reader read, and how its reading ended.
type flowResult struct {
	sent    int
	closed  bool
	recv    int
	readErr error
	badByte error
}

// readFlow reads st to its end, checking every byte, into r.
func readFlow(st *Stream, id uint32, r *flowResult, then func(p []byte) error) {
	buf := make([]byte, 32<<10)
	for {
		n, err := st.Read(buf)
		for k := range n {
			if want := faultByte(id, r.recv+k); buf[k] != want && r.badByte == nil {
				r.badByte = fmt.Errorf("stream %d: byte %d is %#x, want %#x", id, r.recv+k, buf[k], want)
			}
		}
		r.recv += n
		if then != nil && n > 0 {
			if werr := then(buf[:n]); werr != nil && err == nil {
				err = werr
			}
		}
		if err != nil {
			r.readErr = err
			return
		}
	}
}

func TestConnectionFaults(t *testing.T) {
	const (
		streams   = 8
		perStream = 256 << 10
		at        = 300<<10 + 7 // mid-frame, a sixth of the way in
	)
	// How long every blocked call may take to wake after the fault: the
	// stall faults wait for WriteTimeout or the keepalive.
	const wakeBound = 10 * time.Second
	for _, proto := range protocols {
		for _, kind := range []faultKind{faultEOF, faultWriteError, faultShortWrite, faultStall, faultReadStall, faultReset} {
			t.Run(proto.String()+"/"+kind.String(), func(t *testing.T) {
				if kind == faultReadStall && proto == MuxadoV2 {
					t.Skip("muxado has no liveness frame on the wire: a peer that falls silent while we only read is found only by deadlines (see SECURITY.md)")
				}
				checkLeaks(t)
				cfg := &Config{
					Protocol:          proto,
					WriteTimeout:      time.Second,
					KeepAliveInterval: 500 * time.Millisecond,
					KeepAliveTimeout:  time.Second,
				}
				c1, c2 := loopback.MustTCPPair(t)
				fc := newFaultConn(c1, kind, at)
				cli, err := Client(fc, cfg)
				if err != nil {
					t.Fatal(err)
				}
				srv, err := Server(c2, cfg)
				if err != nil {
					t.Fatal(err)
				}
				defer srv.Close()
				defer cli.Close()

				// The server echoes every stream, recording what it read
				// and what its Writes reported.
				var mu sync.Mutex
				up := map[uint32]*flowResult{}   // client to server
				down := map[uint32]*flowResult{} // server to client
				wait := serve(srv, func(st *Stream) {
					r, w := &flowResult{}, &flowResult{}
					readFlow(st, st.ID(), r, func(p []byte) error {
						n, err := st.Write(p)
						w.sent += n
						return err
					})
					if errors.Is(r.readErr, io.EOF) {
						w.closed = st.CloseWrite() == nil
					}
					st.Close()
					mu.Lock()
					up[st.ID()] = r
					down[st.ID()] = w
					mu.Unlock()
				})
				var wg sync.WaitGroup
				type wake struct {
					call string
					err  error
				}
				woke := make(chan wake, 4*streams+4)
				// A call blocked for good until the session ends.
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := cli.AcceptStream(context.Background())
					woke <- wake{"AcceptStream", err}
				}()
				idle, err := cli.OpenStream(ctx(t))
				if err != nil {
					t.Fatal(err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := idle.Read(make([]byte, 1))
					woke <- wake{"idle Read", err}
				}()
				sent := make(map[uint32]*flowResult)
				echoed := make(map[uint32]*flowResult)
				var opened []*Stream
				for range streams {
					st, err := cli.OpenStream(ctx(t))
					if err != nil {
						t.Fatal(err)
					}
					opened = append(opened, st)
				}
				for _, st := range opened {
					s, e := &flowResult{}, &flowResult{}
					sent[st.ID()], echoed[st.ID()] = s, e
					wg.Add(2)
					go func() {
						defer wg.Done()
						p := make([]byte, 16<<10)
						for s.sent < perStream {
							for k := range p {
								p[k] = faultByte(st.ID(), s.sent+k)
							}
							n, err := st.Write(p)
							s.sent += n
							if err != nil {
								woke <- wake{"Write", err}
								return
							}
						}
						s.closed = st.CloseWrite() == nil
					}()
					go func() {
						defer wg.Done()
						readFlow(st, st.ID(), e, nil)
					}()
				}
				// Wait for the fault, or for the workload to finish first.
				allDone := make(chan struct{})
				go func() {
					wg.Wait()
					close(allDone)
				}()
				select {
				case <-fc.fired:
				case <-cli.Done():
					if !fc.hit() {
						t.Fatalf("the session ended before the fault: %v (server: %v)", cli.Err(), srv.Err())
					}
				case <-allDone:
					if !fc.hit() {
						t.Fatal("the workload ended before the fault")
					}
				case <-time.After(30 * time.Second):
					buf := make([]byte, 1<<20)
					t.Fatalf("the fault never fired\n%s", buf[:runtime.Stack(buf, true)])
				}
				faultAt := time.Now()
				select {
				case <-cli.Done():
				case <-time.After(wakeBound):
					t.Fatalf("the client session still runs %v after a %v", wakeBound, kind)
				}
				select {
				case <-allDone:
				case <-time.After(wakeBound):
					t.Fatalf("calls still blocked %v after a %v", wakeBound, kind)
				}
				t.Logf("client session ended %v after the fault: %v", time.Since(faultAt).Round(time.Millisecond), cli.Err())
				srv.Close()
				wait()
				close(woke)
				for w := range woke {
					if w.err == nil || errors.Is(w.err, io.EOF) {
						t.Errorf("blocked %s woke with %v, want an error", w.call, w.err)
					}
				}
				// No byte reported as sent is silently lost: a reader that
				// got io.EOF got everything its writer's Writes reported.
				check := func(dir string, id uint32, w, r *flowResult) {
					if r == nil {
						return // the server never saw the stream
					}
					if w == nil {
						w = &flowResult{}
					}
					if r.badByte != nil {
						t.Errorf("%s: %v", dir, r.badByte)
					}
					if r.recv > w.sent {
						t.Errorf("%s stream %d: read %d bytes of %d written", dir, id, r.recv, w.sent)
					}
					if errors.Is(r.readErr, io.EOF) && (r.recv != w.sent || !w.closed) {
						t.Errorf("%s stream %d: read %d bytes then io.EOF, but the writer's Writes reported %d (closed cleanly: %v)", dir, id, r.recv, w.sent, w.closed)
					}
				}
				for id := range sent {
					check("client to server", id, sent[id], up[id])
					check("server to client", id, down[id], echoed[id])
				}
			})
		}
	}
}
