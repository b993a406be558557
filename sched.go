package polymux

import (
	"sync"

	"github.com/polymux/polymux/internal/wire"
)

// maxPongs bounds ping replies waiting to be written, and maxRefusals
// the RSTs (or FINs) for streams not in the table: refused opens, data
// for closed streams, resets the read loop makes. Past either, the read
// loop waits for the writer, so a peer that floods us without reading the
// replies meets TCP backpressure, and WriteTimeout if it never reads; no
// reply is lost.
const (
	maxPongs    = 16
	maxRefusals = 1024
)

// refusal is an abort frame for a stream the session no longer holds.
type refusal struct {
	id   uint32
	code uint32 // the code the RST carries
}

// scheduler decides what the writer sends next, and starts the writer
// when there is something to send. It owns its queues and who is in them:
// the session's own frames first (GoAway, NOP, ping and its replies,
// refusals), then the streams that owe control frames, in the order they
// asked, then the streams with data, round robin, one frame each per turn,
// as x/net/http2's round-robin write scheduler serves its streams. A
// stream with nothing to send has no entry.
type scheduler struct {
	w      *writer
	roomCh chan struct{} // signalled when the writer takes pongs and refusals

	mu       sync.Mutex // guards every field below
	entries  map[*Stream]*schedEntry
	peak     int           // the most entries since the map was made
	ctrl     []*schedEntry // streams owing control frames, in order, from ctrlHead
	ctrlHead int
	ring     *schedEntry // streams with data: the one served next
	spare    *schedEntry // freed entries, linked by next
	goAwayQ  bool        // a GoAway waits to be written
	code     wire.Code
	lastID   uint32
	goneAway bool // a GoAway was queued: the session sends at most one
	nop      bool
	pinging  bool
	pingID   uint32
	pongs    []uint32
	refusals []refusal
	started  bool // the protocol is known: writing may start
	running  bool // a writer goroutine is at work
	ending   bool // the session is ending: the writer must run once more
	finished bool // the writer ended the connection: it never runs again
}

// smallSched is the size below which the scheduler keeps its map and
// spare entries when it empties, so that streams coming and going cost no
// allocation.
const smallSched = 64

// schedEntry is a stream's place in the scheduler's queues.
type schedEntry struct {
	st         *Stream
	ctrl, data bool        // queued for control frames, for data
	prev, next *schedEntry // the data ring (next also links spare entries)
}

// entry returns st's entry, making one. q.mu must be held.
func (q *scheduler) entry(st *Stream) *schedEntry {
	if e := q.entries[st]; e != nil {
		return e
	}
	e := q.spare
	if e != nil {
		q.spare = e.next
		e.next = nil
	} else {
		e = &schedEntry{}
	}
	e.st = st
	if q.entries == nil {
		q.entries = make(map[*Stream]*schedEntry)
	}
	q.entries[st] = e
	q.peak = max(q.peak, len(q.entries))
	return e
}

// drop frees e once it is in no queue. q.mu must be held.
func (q *scheduler) drop(e *schedEntry) {
	if e.ctrl || e.data {
		return
	}
	delete(q.entries, e.st)
	if len(q.entries) == 0 && q.peak > smallSched {
		// A map never shrinks: once a burst is over, let its memory go.
		q.entries, q.spare, q.peak = nil, nil, 0
		return
	}
	*e = schedEntry{next: q.spare}
	q.spare = e
}

// pushControl queues st for the control frames it owes. st.mu is held.
func (q *scheduler) pushControl(st *Stream) {
	q.mu.Lock()
	if e := q.entry(st); !e.ctrl {
		e.ctrl = true
		q.ctrl = append(q.ctrl, e)
	}
	q.kick()
	q.mu.Unlock()
}

// pushData queues st for its data (and its FIN, and an owed SYN, which
// go in order with data). st.mu is held.
func (q *scheduler) pushData(st *Stream) {
	q.mu.Lock()
	if e := q.entry(st); !e.data {
		e.data = true
		q.link(e)
	}
	q.kick()
	q.mu.Unlock()
}

// pushDirect queues st for its data as pushData does, but where no writer
// is running it starts none: it reports true, and the caller, a Write
// waiting for its own bytes to be written, is then the writer
// (writer.serve). st.mu is held.
func (q *scheduler) pushDirect(st *Stream) (own bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if e := q.entry(st); !e.data {
		e.data = true
		q.link(e)
	}
	if q.running || q.finished || !q.started || q.ending {
		return false
	}
	q.running = true
	return true
}

// link puts e last in the data ring. q.mu must be held.
func (q *scheduler) link(e *schedEntry) {
	if q.ring == nil {
		e.prev, e.next = e, e
		q.ring = e
		return
	}
	last := q.ring.prev
	e.prev, e.next = last, q.ring
	last.next = e
	q.ring.prev = e
}

// unlink takes e out of the data ring. q.mu must be held.
func (q *scheduler) unlink(e *schedEntry) {
	if e.next == e {
		q.ring = nil
	} else {
		e.prev.next = e.next
		e.next.prev = e.prev
		if q.ring == e {
			q.ring = e.next
		}
	}
	e.prev, e.next = nil, nil
}

// remove forgets st, which owes nothing more.
func (q *scheduler) remove(st *Stream) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.entries[st]
	if e == nil {
		return
	}
	if e.data {
		e.data = false
		q.unlink(e)
	}
	e.ctrl = false // a stale entry in q.ctrl is skipped
	q.drop(e)
}

// nextControl returns the next stream owing control frames, or nil.
func (q *scheduler) nextControl() *Stream {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.goAwayQ {
		return nil // as in nextData
	}
	for q.ctrlHead < len(q.ctrl) {
		e := q.ctrl[q.ctrlHead]
		q.ctrl[q.ctrlHead] = nil
		q.ctrlHead++
		if !e.ctrl || q.entries[e.st] != e {
			continue // removed meanwhile
		}
		e.ctrl = false
		st := e.st
		q.drop(e)
		return st
	}
	// Empty: start again at the front, keeping the room unless a burst
	// made it large.
	q.ctrl, q.ctrlHead = q.ctrl[:0], 0
	if cap(q.ctrl) > maxRefusals {
		q.ctrl = nil
	}
	return nil
}

// nextData returns the stream whose turn it is to send data, or nil.
func (q *scheduler) nextData() *Stream {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.ring == nil || q.goAwayQ {
		// A GoAway queued after this batch took the session's frames
		// ends the batch: bytes written after GoAway returned must not
		// reach the peer before it.
		return nil
	}
	return q.ring.st
}

// served records that st sent its frame: it goes last in the ring if it
// has more, and out of it if not. Called from popData, with st.mu held, so
// that a Write queueing more meanwhile is never missed.
func (q *scheduler) served(st *Stream, more bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.entries[st]
	if e == nil || !e.data {
		return
	}
	q.unlink(e)
	if more {
		q.link(e)
		return
	}
	e.data = false
	q.drop(e)
}

// goAway queues GoAway(code), unless the session has queued one already:
// a peer is told once.
func (q *scheduler) goAway(code wire.Code, last uint32) {
	q.mu.Lock()
	if !q.goneAway {
		q.goneAway = true
		q.goAwayQ, q.code, q.lastID = true, code, last
	}
	q.kick()
	q.mu.Unlock()
}

// nopNow queues a NOP.
func (q *scheduler) nopNow() {
	q.mu.Lock()
	q.nop = true
	q.kick()
	q.mu.Unlock()
}

// ping queues a ping with id.
func (q *scheduler) ping(id uint32) {
	q.mu.Lock()
	q.pinging, q.pingID = true, id
	q.kick()
	q.mu.Unlock()
}

// pong queues a ping reply. Only the read loop calls it; while maxPongs
// replies wait, it waits for the writer to take them. A reply is dropped
// only when the session ends, which owes nothing more.
func (q *scheduler) pong(id uint32) {
	q.mu.Lock()
	for len(q.pongs) >= maxPongs {
		if !q.awaitRoom() {
			return
		}
	}
	q.pongs = append(q.pongs, id)
	q.kick()
	q.mu.Unlock()
}

// refuse queues an abort frame for a stream not in the table, waiting as
// pong does while maxRefusals of them wait. Only the read loop calls it.
func (q *scheduler) refuse(id, code uint32) {
	q.mu.Lock()
	for len(q.refusals) >= maxRefusals {
		if !q.awaitRoom() {
			return
		}
	}
	q.refusals = append(q.refusals, refusal{id, code})
	q.kick()
	q.mu.Unlock()
}

// awaitRoom releases q.mu and waits for the writer to take the replies
// queued, then takes q.mu again. It reports false, leaving q.mu released,
// if the session ends first.
func (q *scheduler) awaitRoom() bool {
	q.kick()
	q.mu.Unlock()
	select {
	case <-q.roomCh:
		q.mu.Lock()
		return true
	case <-q.w.s.closing:
		return false
	}
}

// sessionFrames appends the session's own frames to b: GoAway, NOP, ping,
// ping replies and refusals, emptying their queues.
func (q *scheduler) sessionFrames(b *batch) {
	c := q.w.s.caps
	q.mu.Lock()
	if q.goAwayQ {
		q.goAwayQ = false
		b.frame(wire.Frame{Type: wire.TypeGoAway, Value: uint32(q.code), LastID: q.lastID})
	}
	if q.nop {
		q.nop = false
		b.frame(wire.Frame{Type: wire.TypeNop})
	}
	if q.pinging {
		q.pinging = false
		b.frame(wire.Frame{Type: wire.TypePing, Flags: wire.FlagSYN, Value: q.pingID})
	}
	took := len(q.pongs) > 0 || len(q.refusals) > 0
	for _, id := range q.pongs {
		b.frame(wire.Frame{Type: wire.TypePing, Flags: wire.FlagACK, Value: id})
	}
	q.pongs = q.pongs[:0]
	for _, r := range q.refusals {
		b.frame(abortFrame(c, r.id, r.code))
	}
	q.refusals = q.refusals[:0]
	if cap(q.refusals) > maxRefusals {
		q.refusals = nil
	}
	q.mu.Unlock()
	if took {
		notify(q.roomCh)
	}
}

// kick starts the writer if there may be work for it and none is
// running. q.mu must be held.
func (q *scheduler) kick() {
	if q.running || q.finished || !(q.started || q.ending) {
		return
	}
	q.running = true
	go q.w.runFn()
}

// park stops the writer if there is nothing left to send and the session
// is not ending, reporting whether it stopped; the next push starts it
// again.
func (q *scheduler) park() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.ending || q.ring != nil || q.ctrlHead < len(q.ctrl) || q.goAwayQ || q.nop || q.pinging || len(q.pongs) > 0 || len(q.refusals) > 0 {
		return false
	}
	q.running = false
	return true
}
