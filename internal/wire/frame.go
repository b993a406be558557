// Package wire turns the bytes of each supported multiplexing protocol into
// protocol-neutral frames and back. A codec is pure: it holds no session
// state, starts no goroutine and allocates nothing per frame. The engine in
// the root package works only with Frame and Caps, never with wire bytes.
package wire

import (
	"errors"
	"fmt"
	"io"
)

// Type is the kind of a neutral frame.
type Type uint8

const (
	// TypeData carries Length bytes of stream payload, which follow the
	// header on the wire and are read by the caller of ReadFrame.
	TypeData Type = iota
	// TypeWindow is a stream control frame: it carries flags (SYN, ACK,
	// FIN, RST) and, without RST, send credit for the stream. With
	// Caps.Window == WindowDelta, Value is an increment; with
	// WindowAbsolute, Value is the receiver's total consumed byte count and
	// Window its window size. With RST, Value is an error code.
	TypeWindow
	// TypePing is a liveness probe (FlagSYN) or its reply (FlagACK); Value
	// is opaque and echoed.
	TypePing
	// TypeGoAway tells the peer to open no more streams. Value is an error
	// code (see Code), LastID the last peer stream the sender accepted
	// (zero where the protocol does not carry it).
	TypeGoAway
	// TypeNop carries nothing; it only proves the sender alive.
	TypeNop
)

// String names the type for logs and test failures.
func (t Type) String() string {
	switch t {
	case TypeData:
		return "DATA"
	case TypeWindow:
		return "WINDOW"
	case TypePing:
		return "PING"
	case TypeGoAway:
		return "GOAWAY"
	case TypeNop:
		return "NOP"
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// Flags are the neutral stream flags. Codecs map them to their own bits or
// commands; a flag a protocol cannot express is an encode error.
type Flags uint8

const (
	FlagSYN Flags = 1 << iota // open a stream; on a ping: request
	FlagACK                   // acknowledge an open; on a ping: reply
	FlagFIN                   // the sender writes no more on this stream
	FlagRST                   // abort the stream in both directions
)

// Code is the reason for a reset or a GoAway the engine makes on its own.
// Its values are muxado's, which extend yamux's GoAway codes (0 normal,
// 1 protocol error, 2 internal error). Where a protocol's codes belong to
// the application (yamux RST), the engine sends 0 instead; see
// Caps.ReasonCodes.
type Code uint32

const (
	CodeNone         Code = 0
	CodeProtocol     Code = 1
	CodeInternal     Code = 2
	CodeFlowControl  Code = 3
	CodeStreamClosed Code = 4
	CodeRefused      Code = 5
	CodeAcceptFull   Code = 9
)

// Frame is one frame in protocol-neutral form. It is a small value type:
// decoding and encoding never allocate.
type Frame struct {
	Type   Type
	Flags  Flags
	Stream uint32 // 0 for session frames (ping, goaway, nop)
	Length uint32 // TypeData: payload bytes that follow on the wire
	Value  uint32 // see the Type constants
	Window uint32 // TypeWindow with WindowAbsolute: the advertised window
	LastID uint32 // TypeGoAway: last stream id accepted by the sender
}

// String formats a frame for logs and test failures.
func (f Frame) String() string {
	return fmt.Sprintf("%s flags=%#x stream=%d len=%d value=%d window=%d last=%d",
		f.Type, uint8(f.Flags), f.Stream, f.Length, f.Value, f.Window, f.LastID)
}

// WindowMode says how a protocol does per-stream flow control.
type WindowMode uint8

const (
	// WindowNone: no per-stream windows (smux v1); only the session
	// buffer bounds received data.
	WindowNone WindowMode = iota
	// WindowDelta: window updates carry an increment (yamux, muxado).
	WindowDelta
	// WindowAbsolute: window updates carry (consumed, window) totals
	// (smux v2).
	WindowAbsolute
)

// Caps describes what a protocol can express. The engine reads this table
// and has no other per-protocol branch.
type Caps struct {
	Window        WindowMode
	InitialWindow uint32 // window each side assumes of the other at open
	MaxPayload    uint32 // largest DATA payload the wire can carry
	FirstID       [2]uint32
	// MaxStreamID is the largest stream id that may be opened.
	MaxStreamID uint32
	// AckOpens: an opened stream is acknowledged (ACK) or refused (RST).
	AckOpens bool
	// Reset: the protocol has RST, so streams can be aborted and refused.
	Reset bool
	// PingReply: pings are answered, so Ping can measure a round trip.
	PingReply bool
	// KeepAliveNop: the peer expects periodic NOP frames to consider us
	// alive (smux), and sends none itself when busy.
	KeepAliveNop bool
	// GoAway: the protocol has a GoAway frame.
	GoAway bool
	// GoAwayLastID: the GoAway frame carries the last accepted stream id.
	GoAwayLastID bool
	// ReasonCodes: RST codes have protocol-defined meanings (muxado's), so
	// the engine's own resets carry their Code and a received Refused or
	// AcceptFull means a refusal. Without it (yamux) an RST code belongs to
	// the application: the engine's own resets carry 0, and a received
	// code is never read as one of the engine's.
	ReasonCodes bool
	// GoAwayKeepsStreams: peers keep serving their open streams after a
	// GoAway (muxado), so a graceful end may announce itself at once.
	// Without it (yamux: go-yamux closes its whole session on any GoAway)
	// GoAway goes out only when the session finally closes.
	GoAwayKeepsStreams bool
	// WindowOnOpen: every stream control frame (SYN, ACK, FIN) carries a
	// window increment as a plain update does (yamux), so a SYN or an ACK
	// can grant a window larger than the initial one.
	WindowOnOpen bool
	// SynFinApart: SYN and FIN must never be sent in the same frame.
	SynFinApart bool
	// OverrunResets: a window overrun resets only that stream
	// (CodeFlowControl) instead of closing the session.
	OverrunResets bool
	// RejectUnknownData: data for a stream that is not open is answered
	// with RST CodeStreamClosed.
	RejectUnknownData bool
}

// Codec reads and writes one protocol's frames.
type Codec interface {
	// Name is the protocol's short name ("yamux", "smux1", ...).
	Name() string
	// Caps describes the protocol.
	Caps() *Caps
	// ReadFrame reads one frame's header and any fixed control body from
	// r, using Peek and Discard only, and never Peeks more than
	// MinReadBuffer bytes. For TypeData the Length payload bytes are left
	// in r for the caller. Errors: io.EOF when r ends cleanly before a
	// frame, io.ErrUnexpectedEOF when it ends inside one, an error
	// wrapping ErrProtocol when the bytes break the protocol, or r's own
	// error.
	ReadFrame(r Reader) (Frame, error)
	// AppendFrame appends the encoding of f, without any DATA payload, to
	// dst. A frame the protocol cannot express is an error wrapping
	// ErrUnsupported; dst is then returned unchanged.
	AppendFrame(dst []byte, f Frame) ([]byte, error)
}

// Reader is what a codec reads frames from: the Peek and Discard of a
// buffered reader, such as bufio.Reader's. Peek returns the next n bytes
// without consuming them, with an error when fewer arrive (io.EOF, with
// the bytes that did, when the input ends); Discard consumes n bytes.
type Reader interface {
	Peek(n int) ([]byte, error)
	Discard(n int) (int, error)
}

// MinReadBuffer is the most a codec Peeks at once: a Reader needs room to
// buffer that many bytes.
const MinReadBuffer = 64

// MaxEncodedLen bounds the bytes AppendFrame appends for one frame.
const MaxEncodedLen = 32

// ErrProtocol is wrapped by every decode error caused by bytes that break
// a protocol's rules.
var ErrProtocol = errors.New("protocol violation")

// ErrUnsupported is wrapped by encode errors for frames a protocol cannot
// express.
var ErrUnsupported = errors.New("frame not expressible in this protocol")

// protoErr returns an error wrapping ErrProtocol with a formatted reason.
func protoErr(codec, format string, args ...any) error {
	return fmt.Errorf("%s: %w: %s", codec, ErrProtocol, fmt.Sprintf(format, args...))
}

// unsupported returns an error wrapping ErrUnsupported for frame f.
func unsupported(codec string, f Frame) error {
	return fmt.Errorf("%s: %w: %v", codec, ErrUnsupported, f)
}

// peek returns the next n bytes of r without consuming them. When r ends
// first, the error is io.EOF if nothing at all was left (atStart and no
// byte buffered) and io.ErrUnexpectedEOF otherwise.
func peek(r Reader, n int, atStart bool) ([]byte, error) {
	b, err := r.Peek(n)
	if err == nil {
		return b, nil
	}
	if err == io.EOF && (len(b) > 0 || !atStart) {
		return nil, io.ErrUnexpectedEOF
	}
	return nil, err
}

// discard skips n bytes of r; running out of input is io.ErrUnexpectedEOF.
func discard(r Reader, n int) error {
	_, err := r.Discard(n)
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
