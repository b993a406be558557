package polymux

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/polymux/polymux/internal/wire"
)

// headerArena is the room for encoded headers in one batch.
const headerArena = 64 << 10

var arenas = newBufferStack(headerArena, 16)

// taken records DATA bytes of a stream that are in the batch being written:
// from its send buffer, or from the caller's slice of a Write (direct).
type taken struct {
	st     *Stream
	n      int
	end    int // the batch's length up to the end of this payload
	direct bool
}

// batch is the frames of one write to the connection: headers encoded
// into an arena, payloads referenced where they lie, in order. The arena
// is borrowed from a pool while the writer works and given back when it
// stops. Only the writer goroutine uses a batch.
type batch struct {
	codec     wire.Codec
	arena     *[]byte
	hdrs      []byte
	bufs      [][]byte
	taken     []taken
	settled   []*Stream // streams whose FIN is in the batch
	frames    int
	control   int // frames that are not DATA: session and control frames
	dataBytes int
	size      int   // bytes in the batch
	err       error // an encode error: a bug, which ends the session
}

// reset empties the batch, borrowing an arena if it has none.
func (b *batch) reset() {
	if b.arena == nil {
		b.arena = arenas.get()
	}
	b.hdrs = (*b.arena)[:0]
	clear(b.bufs)
	b.bufs = b.bufs[:0]
	clear(b.taken)
	b.taken = b.taken[:0]
	clear(b.settled)
	b.settled = b.settled[:0]
	b.frames, b.control, b.dataBytes, b.size = 0, 0, 0, 0
}

// release gives the arena back, for a writer about to stop, and lets go
// of the batch's lists if a burst made them long.
func (b *batch) release() {
	if b.arena != nil {
		arenas.put(b.arena)
		b.arena, b.hdrs = nil, nil
	}
	clear(b.bufs[:cap(b.bufs)])
	clear(b.taken[:cap(b.taken)])
	clear(b.settled[:cap(b.settled)])
	if cap(b.bufs) > smallSched {
		b.bufs, b.taken, b.settled = nil, nil, nil
	}
}

// room reports whether n more headers fit in the arena, which must never
// grow, since the batch holds slices of it.
func (b *batch) room(n int) bool { return cap(b.hdrs)-len(b.hdrs) >= n*wire.MaxEncodedLen }

// frame appends f's header.
func (b *batch) frame(f wire.Frame) {
	start := len(b.hdrs)
	hdrs, err := b.codec.AppendFrame(b.hdrs, f)
	if err != nil {
		if b.err == nil {
			b.err = fmt.Errorf("polymux: internal error: encoding %v: %w", f, err)
		}
		return
	}
	b.hdrs = hdrs
	b.bufs = append(b.bufs, hdrs[start:])
	b.frames++
	b.size += len(hdrs) - start
}

// data appends a DATA frame f of st whose payload is the f.Length bytes of
// q from off on.
func (b *batch) data(st *Stream, f wire.Frame, q *byteQueue, off int) {
	b.frame(f)
	k := int(f.Length)
	b.bufs = q.slices(off, k, b.bufs)
	b.dataBytes += k
	b.size += k
	b.taken = append(b.taken, taken{st, k, b.size, false})
}

// direct appends a DATA frame f of st whose payload is p, the bytes of a
// Write waiting for them to be written.
func (b *batch) direct(st *Stream, f wire.Frame, p []byte) {
	b.frame(f)
	b.bufs = append(b.bufs, p)
	b.dataBytes += len(p)
	b.size += len(p)
	b.taken = append(b.taken, taken{st, len(p), b.size, true})
}

// settle records that st's FIN is in the batch.
func (b *batch) settle(st *Stream) { b.settled = append(b.settled, st) }

// encoder puts batches on the connection, with the write deadlines that
// bound each write.
type encoder struct {
	conn     net.Conn
	timeout  time.Duration // Config.WriteTimeout
	vectored bool          // writev works on conn
	fast     bool          // the connection takes directBatchBytes well within timeout (see noteWrite)
	iov      net.Buffers
	stage    []byte
	now      func() int64 // the session's clock
	lastSend atomic.Int64 // now() at the last write

	dlMu         sync.Mutex // guards the connection's write deadline and the fields below
	lastDeadline time.Time  // when the deadline was last moved
	held         bool       // WriteTimeout is lifted while the read loop pauses
	limit        time.Time  // the end of the session: no write lasts past it
}

func (e *encoder) init(conn net.Conn, timeout time.Duration, now func() int64) {
	e.conn, e.timeout, e.now = conn, timeout, now
	e.fast = timeout <= 0 // with no WriteTimeout, no write is too slow
	switch conn.(type) {
	case *net.TCPConn, *net.UnixConn:
		e.vectored = true
	}
}

// write puts the batch on the connection, and reports how many of its
// bytes the connection took.
func (e *encoder) write(b *batch) (int, error) {
	var start time.Time
	if e.timeout > 0 {
		start = time.Now()
		e.armDeadline(start)
	}
	var err error
	var n int
	if e.vectored {
		e.iov = b.bufs
		var n64 int64
		n64, err = e.iov.WriteTo(e.conn)
		n = int(n64)
		e.iov = nil
	} else {
		e.stage = e.stage[:0]
		for _, p := range b.bufs {
			e.stage = append(e.stage, p...)
		}
		n, err = e.conn.Write(e.stage)
		if err == nil && n < len(e.stage) {
			// A Write that breaks io.Writer's contract: the frames are
			// cut, and the stream cannot be resynchronised.
			err = io.ErrShortWrite
		}
		if cap(e.stage) > 2*batchBytes {
			e.stage = nil
		}
	}
	if err == nil {
		e.lastSend.Store(e.now())
		e.noteWrite(b.size, start)
	}
	return n, err
}

// noteWrite learns from a write of size bytes that began at start whether
// a batch may carry directBatchBytes: only once a write of at least
// batchBytes went at a rate that would carry directBatchBytes within a
// quarter of WriteTimeout. Until then, and after a write that went
// slower, batches keep batchBytes, so a slow link (a 1 Mbit/s KCP tunnel,
// say) never gets a write that WriteTimeout could end when 256 KiB would
// have passed. A write also starts with at least half of WriteTimeout
// left (armDeadline). Smaller writes say nothing: the kernel's buffer
// takes them at once on any link, and cost no clock read. With no
// WriteTimeout there is nothing to learn (init).
func (e *encoder) noteWrite(size int, start time.Time) {
	if e.timeout > 0 && size >= batchBytes {
		d := time.Since(start)
		e.fast = int64(d)*directBatchBytes <= int64(e.timeout/4)*int64(size)
	}
}

// armDeadline moves the connection's write deadline to WriteTimeout from
// now, once half of it has passed since it was last moved, so that one
// write stuck longer ends the session. While the read loop pauses by
// choice (holdDeadline) there is none, and once the session ends none
// lies past its end. Only a write with a WriteTimeout calls it.
func (e *encoder) armDeadline(now time.Time) {
	e.dlMu.Lock()
	defer e.dlMu.Unlock()
	if e.held || now.Sub(e.lastDeadline) <= e.timeout/2 {
		return
	}
	d := now.Add(e.timeout)
	if !e.limit.IsZero() && e.limit.Before(d) {
		d = e.limit
	}
	e.conn.SetWriteDeadline(d)
	e.lastDeadline = now
}

// holdDeadline lifts the write timeout while the read loop pauses by this
// side's choice (the peer may be waiting for that same pause to end before
// it reads), and arms it afresh when the pause ends.
func (e *encoder) holdDeadline(hold bool) {
	e.dlMu.Lock()
	defer e.dlMu.Unlock()
	if e.held == hold || !e.limit.IsZero() {
		e.held = hold
		return
	}
	e.held = hold
	if hold {
		e.conn.SetWriteDeadline(time.Time{})
	} else {
		e.lastDeadline = time.Time{}
	}
}

// limitDeadline bounds every write from now on by t, the end of the
// session, a write already under way included.
func (e *encoder) limitDeadline(t time.Time) {
	e.dlMu.Lock()
	defer e.dlMu.Unlock()
	e.limit, e.held = t, false
	e.lastDeadline = time.Time{}
	e.conn.SetWriteDeadline(t)
}
