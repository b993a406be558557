// Package flow is the flow-control arithmetic of a multiplexed session:
// per-stream send credit, per-stream receive windows and the session-wide
// receive budget. It is plain counters with no I/O, no goroutines and no
// clock of its own, so every rule is testable alone.
package flow

import (
	"errors"
	"math"
	"time"
)

// ErrOverflow reports a window update that would push send credit past
// 2^32-1: a peer that sends it breaks the protocol.
var ErrOverflow = errors.New("window update overflows 32 bits")

// ErrOverrun reports data beyond the window the receiver granted.
var ErrOverrun = errors.New("data exceeds the receive window")

// ErrConsumed reports an absolute window update claiming more bytes
// consumed than were ever sent.
var ErrConsumed = errors.New("peer consumed more than was sent")

// Mode is how a protocol does per-stream flow control. With ModeNone there
// are no per-stream windows: a Send never runs out of credit, a Recv
// never grants any, and only the session Budget bounds what arrives.
type Mode uint8

const (
	ModeDelta    Mode = iota // updates carry an increment (yamux, muxado)
	ModeAbsolute             // updates carry (consumed, window) totals (smux v2)
	ModeNone                 // no per-stream windows (smux v1)
)

// Send is the credit this side may still spend on one stream: bytes the
// peer has agreed to receive that are not yet accepted for sending. Its
// zero value has no credit. Not safe for concurrent use.
type Send struct {
	mode     Mode
	avail    uint32 // credit left
	accepted uint32 // total bytes spent, mod 2^32 (absolute windows)
}

// NewSend returns credit for a stream whose peer starts with window bytes
// and sends delta updates.
func NewSend(window uint32) Send { return NewSendFor(ModeDelta, window) }

// NewSendFor returns credit for a stream of a protocol with the given
// mode whose peer starts with window bytes.
func NewSendFor(mode Mode, window uint32) Send {
	if mode == ModeNone {
		window = math.MaxUint32
	}
	return Send{mode: mode, avail: window}
}

// Avail is the credit left.
func (s *Send) Avail() uint32 { return s.avail }

// Spend takes n bytes of credit; n must not exceed Avail.
func (s *Send) Spend(n uint32) {
	if s.mode == ModeNone {
		return
	}
	s.avail -= n
	s.accepted += n
}

// Apply applies a window update as the mode reads it: value is an
// increment (ModeDelta), or with window the peer's consumed and window
// totals (ModeAbsolute); ModeNone has no updates to apply.
func (s *Send) Apply(value, window uint32) error {
	switch s.mode {
	case ModeDelta:
		return s.Grow(value)
	case ModeAbsolute:
		return s.Update(value, window)
	}
	return nil
}

// Grow adds a delta window update. An update that would overflow 32 bits
// is refused and leaves the credit unchanged.
func (s *Send) Grow(delta uint32) error {
	if delta > math.MaxUint32-s.avail {
		return ErrOverflow
	}
	s.avail += delta
	return nil
}

// Update applies an absolute window update: the peer has consumed
// `consumed` bytes in total (mod 2^32) and holds a window of `window`.
func (s *Send) Update(consumed, window uint32) error {
	inflight := s.accepted - consumed
	if int32(inflight) < 0 {
		return ErrConsumed
	}
	if inflight >= window {
		s.avail = 0
	} else {
		s.avail = window - inflight
	}
	return nil
}

// Recv is one stream's receive window. It keeps the invariant
// credit + buffered + pending == window: every byte of the window is either
// still grantable to the peer, held unread, or read but not yet returned.
// Not safe for concurrent use.
//
// Memory is charged to a session Budget so that no byte is counted twice:
// window growth beyond the protocol's initial window is reserved when it is
// granted (see Tune), and buffered bytes are charged only for the part that
// exceeds that reservation. A stream therefore holds
// max(buffered, window-initial) of the budget; Held reports it.
type Recv struct {
	// Laid out in 40 bytes, which keeps a polymux Stream within 256.
	epochStart time.Duration
	window     uint32 // bytes this side promises to hold for the stream
	base       uint32 // the protocol's initial window: never reserved
	credit     uint32 // bytes the peer may send before the next update
	buffered   uint32 // received and not yet read
	pending    uint32 // read (or dropped) and not yet returned to the peer
	consumed   uint32 // total read or dropped, mod 2^32 (absolute windows)
	epochRead  uint32
	mode       Mode
}

// NewRecv returns a receive window of size window for a peer that assumes
// it may send `assumed` bytes before any update (the protocol's initial
// window). window must be at least assumed; the difference is owed to the
// peer as an initial update (see Update). The starting window is never
// charged to the budget for reservation: buffered bytes are.
func NewRecv(window, assumed uint32) Recv { return NewRecvFor(ModeDelta, window, assumed) }

// NewRecvFor is NewRecv for a protocol with the given mode. With ModeNone
// the window is unlimited and never granted: only the budget bounds what
// the stream holds.
func NewRecvFor(mode Mode, window, assumed uint32) Recv {
	if mode == ModeNone {
		window, assumed = math.MaxUint32, math.MaxUint32
	}
	if window < assumed {
		window = assumed
	}
	return Recv{mode: mode, window: window, base: window, credit: assumed, pending: window - assumed}
}

// reserved is the window growth held in the budget.
func (r *Recv) reserved() uint32 { return r.window - r.base }

// over is the part of b buffered bytes not covered by the reservation.
func (r *Recv) over(b uint32) uint32 {
	if b > r.reserved() {
		return b - r.reserved()
	}
	return 0
}

// Charge is the budget n more received bytes need.
func (r *Recv) Charge(n uint32) uint32 { return r.over(r.buffered+n) - r.over(r.buffered) }

// Refund is the budget reading n buffered bytes frees.
func (r *Recv) Refund(n uint32) uint32 { return r.over(r.buffered) - r.over(r.buffered-n) }

// Fits reports whether n more bytes are within the credit granted.
func (r *Recv) Fits(n uint32) bool { return n <= r.credit }

// Credit is what the peer may still send before the next update.
func (r *Recv) Credit() uint32 { return r.credit }

// Finish ends the window's growth reservation once no more data can arrive
// (the peer closed, or this side stopped reading), and returns the budget
// that frees: from then on only buffered bytes are held.
func (r *Recv) Finish() uint32 {
	held := r.Held()
	r.base = r.window
	return held - r.Held()
}

// Held is the budget the stream holds: its reservation plus buffered bytes
// beyond it. It is what to release when the stream ends.
func (r *Recv) Held() uint32 { return r.reserved() + r.over(r.buffered) }

// Window is the window size.
func (r *Recv) Window() uint32 { return r.window }

// Advertised is the window the peer is told of: 0 with ModeNone.
func (r *Recv) Advertised() uint32 {
	if r.mode == ModeNone {
		return 0
	}
	return r.window
}

// Buffered is the number of bytes received and not yet read.
func (r *Recv) Buffered() uint32 { return r.buffered }

// Consumed is the total number of bytes read or dropped, mod 2^32.
func (r *Recv) Consumed() uint32 { return r.consumed }

// Receive accounts n bytes arriving from the peer. More than the granted
// credit is ErrOverrun and changes nothing.
func (r *Recv) Receive(n uint32) error {
	if n > r.credit {
		return ErrOverrun
	}
	if r.mode != ModeNone {
		r.credit -= n
	}
	r.buffered += n
	return nil
}

// Read accounts n buffered bytes handed to the application (or dropped);
// n must not exceed Buffered. With ModeNone nothing is owed back.
func (r *Recv) Read(n uint32) {
	r.buffered -= n
	r.consumed += n
	if r.mode != ModeNone {
		r.pending += n
	}
}

// UpdateDue reports whether Update would grant credit now.
func (r *Recv) UpdateDue(force bool) bool {
	return r.pending > 0 && (force || r.pending >= r.window/2)
}

// Grant is Update in the wire's terms: the value (and, with
// ModeAbsolute, the window) a window update carries: the increment with
// ModeDelta, the consumed total with ModeAbsolute.
func (r *Recv) Grant(force bool) (value, window uint32, ok bool) {
	delta, ok := r.Update(force)
	if !ok {
		return 0, 0, false
	}
	if r.mode == ModeAbsolute {
		return r.consumed, r.window, true
	}
	return delta, 0, true
}

// Update returns the credit to grant the peer now, if any: the bytes read
// since the last update, once they reach half the window (so updates are
// batched), or as soon as there are any when force is set. The returned
// delta counts as granted.
func (r *Recv) Update(force bool) (delta uint32, ok bool) {
	if !r.UpdateDue(force) {
		return 0, false
	}
	delta = r.pending
	r.credit += delta
	r.pending = 0
	return delta, true
}
