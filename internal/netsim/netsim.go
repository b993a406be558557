// Package netsim makes in-memory connections that behave like a network
// link with latency and, optionally, limited bandwidth, so tests and
// benchmarks can reproduce a 50 ms, 1 Gbit/s path on one machine.
package netsim

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Link describes one direction of a simulated path.
type Link struct {
	// Latency is the one-way delay: bytes written at t are readable at
	// t+Latency. Writes are pipelined, so the delay never serialises them.
	Latency time.Duration
	// Bandwidth caps the bytes per second the link carries; 0 means no
	// cap.
	Bandwidth int64
	// Buffer bounds the bytes in flight on the link, as a socket buffer
	// does: a writer blocks past it. 0 means 64 MiB.
	Buffer int
}

// Pipe returns the two ends of a connection whose each direction behaves
// like link.
func Pipe(link Link) (net.Conn, net.Conn) {
	if link.Buffer <= 0 {
		link.Buffer = 64 << 20
	}
	ab, ba := newQueue(link), newQueue(link)
	return &conn{in: ba, out: ab, local: addr("a"), remote: addr("b")},
		&conn{in: ab, out: ba, local: addr("b"), remote: addr("a")}
}

type addr string

func (a addr) Network() string { return "netsim" }
func (a addr) String() string  { return string(a) }

// segment is the bytes of one write, readable from at.
type segment struct {
	data []byte
	at   time.Time
}

// queue is one direction: written bytes with the time each becomes
// readable.
type queue struct {
	link Link

	mu       sync.Mutex // guards the fields below
	segs     []segment  // in flight, oldest first
	inflight int        // bytes in segs
	free     time.Time  // when the link finishes sending what it holds
	closed   bool
	changed  chan struct{} // closed and replaced on every change
	rdl, wdl time.Time
}

func newQueue(link Link) *queue {
	return &queue{link: link, changed: make(chan struct{})}
}

// signal wakes every waiter. q.mu must be held.
func (q *queue) signal() {
	close(q.changed)
	q.changed = make(chan struct{})
}

// wait blocks until something changes, until at (if not zero) or until
// the deadline dl, and reports a passed deadline. q.mu is held on entry and
// on return.
func (q *queue) wait(at, dl time.Time) error {
	if !dl.IsZero() && !time.Now().Before(dl) {
		return os.ErrDeadlineExceeded
	}
	until := at
	if until.IsZero() || (!dl.IsZero() && dl.Before(until)) {
		until = dl
	}
	changed := q.changed
	q.mu.Unlock()
	var timer <-chan time.Time
	if !until.IsZero() {
		t := time.NewTimer(time.Until(until))
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-changed:
	case <-timer:
	}
	q.mu.Lock()
	return nil
}

func (q *queue) write(p []byte) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for n < len(p) {
		if q.closed {
			return n, io.ErrClosedPipe
		}
		room := q.link.Buffer - q.inflight
		if room <= 0 {
			if err := q.wait(time.Time{}, q.wdl); err != nil {
				return n, err
			}
			continue
		}
		k := min(room, len(p)-n)
		now := time.Now()
		sent := now
		if q.link.Bandwidth > 0 {
			start := q.free
			if start.Before(now) {
				start = now
			}
			sent = start.Add(time.Duration(float64(k) / float64(q.link.Bandwidth) * float64(time.Second)))
			q.free = sent
		}
		q.segs = append(q.segs, segment{data: append([]byte(nil), p[n:n+k]...), at: sent.Add(q.link.Latency)})
		q.inflight += k
		n += k
		q.signal()
	}
	return n, nil
}

func (q *queue) readInto(p []byte) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		now := time.Now()
		n := 0
		for n < len(p) && len(q.segs) > 0 && !q.segs[0].at.After(now) {
			seg := &q.segs[0]
			k := copy(p[n:], seg.data)
			seg.data = seg.data[k:]
			n += k
			if len(seg.data) == 0 {
				q.segs[0] = segment{}
				q.segs = q.segs[1:]
			}
		}
		if n > 0 {
			q.inflight -= n
			q.signal()
			return n, nil
		}
		if q.closed && len(q.segs) == 0 {
			return 0, io.EOF
		}
		var at time.Time
		if len(q.segs) > 0 {
			at = q.segs[0].at
		}
		if err := q.wait(at, q.rdl); err != nil {
			return 0, err
		}
	}
}

func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.signal()
	q.mu.Unlock()
}

func (q *queue) setDeadline(read bool, t time.Time) {
	q.mu.Lock()
	if read {
		q.rdl = t
	} else {
		q.wdl = t
	}
	q.signal()
	q.mu.Unlock()
}

// conn is one end of a Pipe.
type conn struct {
	in, out       *queue
	local, remote net.Addr
	once          sync.Once
	closed        atomic.Bool
}

func (c *conn) Read(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	if len(p) == 0 {
		return 0, nil
	}
	n, err := c.in.readInto(p)
	if err == io.EOF && c.closed.Load() {
		err = net.ErrClosed
	}
	return n, err
}

func (c *conn) Write(p []byte) (int, error) { return c.out.write(p) }

// Close closes both directions: the peer reads what is in flight, then
// io.EOF; this end's blocked calls return.
func (c *conn) Close() error {
	c.once.Do(func() {
		c.closed.Store(true)
		c.out.close()
		c.in.close()
	})
	return nil
}

func (c *conn) LocalAddr() net.Addr  { return c.local }
func (c *conn) RemoteAddr() net.Addr { return c.remote }

func (c *conn) SetDeadline(t time.Time) error {
	c.in.setDeadline(true, t)
	c.out.setDeadline(false, t)
	return nil
}

func (c *conn) SetReadDeadline(t time.Time) error {
	c.in.setDeadline(true, t)
	return nil
}

func (c *conn) SetWriteDeadline(t time.Time) error {
	c.out.setDeadline(false, t)
	return nil
}
