package polymux

import (
	"errors"
	"fmt"
	"net"
	"os"
)

// Error is the type of every sentinel error of this package. Errors that
// come from a deadline report Timeout() == true, so they satisfy net.Error.
type Error struct {
	msg     string
	timeout bool
	also    error // another sentinel this error matches with errors.Is
}

func (e *Error) Error() string { return e.msg }

// Timeout reports whether the error comes from a deadline.
func (e *Error) Timeout() bool { return e.timeout }

// Temporary reports the same as Timeout; it exists for old net.Error users.
func (e *Error) Temporary() bool { return e.timeout }

// Is lets errors.Is match the standard errors an Error stands for, such as
// net.ErrClosed for ErrSessionClosed and os.ErrDeadlineExceeded for
// ErrTimeout.
func (e *Error) Is(target error) bool {
	return e.also != nil && (target == e.also || errors.Is(e.also, target))
}

var _ net.Error = (*Error)(nil)

// The errors of this package. Every error returned by a Session or Stream
// matches one of them with errors.Is, possibly wrapped with detail.
var (
	// ErrSessionClosed: the session has ended. Also matches net.ErrClosed.
	ErrSessionClosed = &Error{msg: "polymux: session closed", also: net.ErrClosed}
	// ErrStreamClosed: the stream was closed by this side. Also matches
	// net.ErrClosed.
	ErrStreamClosed = &Error{msg: "polymux: stream closed", also: net.ErrClosed}
	// ErrStreamReset: the peer (or this side) reset the stream.
	ErrStreamReset = &Error{msg: "polymux: stream reset"}
	// ErrStreamRefused: the peer refused a stream this side opened
	// (backlog full, stream limit reached, or going away). It also
	// matches ErrStreamReset, so code that knows only resets sees one.
	ErrStreamRefused = &Error{msg: "polymux: stream refused by peer", also: ErrStreamReset}
	// ErrGoAway: the peer sent GoAway, so no new streams may be opened.
	ErrGoAway = &Error{msg: "polymux: peer is going away"}
	// ErrTimeout: a deadline passed. Also matches os.ErrDeadlineExceeded,
	// and its Timeout method reports true.
	ErrTimeout = &Error{msg: "polymux: i/o timeout", timeout: true, also: os.ErrDeadlineExceeded}
	// ErrKeepAliveTimeout: the peer stopped answering keepalive probes.
	ErrKeepAliveTimeout = &Error{msg: "polymux: keepalive timeout: peer stopped answering", timeout: true}
	// ErrProtocol: the peer broke the wire protocol; the session is closed.
	ErrProtocol = &Error{msg: "polymux: protocol error"}
	// ErrStreamsExhausted: no stream IDs are left on this session.
	ErrStreamsExhausted = &Error{msg: "polymux: stream IDs exhausted"}
	// ErrWriteClosed: Write after CloseWrite or Close.
	ErrWriteClosed = &Error{msg: "polymux: write on a stream closed for writing"}
	// ErrOpenTimeout: the peer never acknowledged a stream this side opened
	// within Config.StreamOpenTimeout; the stream was reset. Also matches
	// ErrStreamReset, and its Timeout method reports true.
	ErrOpenTimeout = &Error{msg: "polymux: stream open timed out: peer never acknowledged it", timeout: true, also: ErrStreamReset}
)

// Errors of graceful shutdown; they match ErrSessionClosed or
// net.ErrClosed, as net/http and friends expect of a closed listener.
var (
	errAcceptClosed = &Error{msg: "polymux: session no longer accepts streams", also: net.ErrClosed}
	errShuttingDown = &Error{msg: "polymux: session is shutting down", also: ErrSessionClosed}
)

// StreamError is the error Read and Write return once the stream was
// reset, by this side (Reset, ResetWithError) or by the peer, with the
// error code the reset carried: an application's code on yamux (0 for
// resets polymux makes on its own, as go-yamux does), one of muxado's
// codes or an application's on muxado. smux resets carry no code, and
// report ErrStreamReset alone. It matches ErrStreamReset with errors.Is.
type StreamError struct {
	Code   uint32
	Remote bool // the peer reset the stream
}

func (e *StreamError) Error() string {
	if e.Remote {
		return fmt.Sprintf("polymux: stream reset by peer (error code %d)", e.Code)
	}
	return fmt.Sprintf("polymux: stream reset (error code %d)", e.Code)
}

// Is makes StreamError match ErrStreamReset.
func (e *StreamError) Is(target error) bool { return target == ErrStreamReset }

// SessionError is why a session ended when an error code came with it:
// the code of the peer's GoAway (Remote), or the one this side closed with
// (CloseWithError). It matches ErrSessionClosed (and so net.ErrClosed),
// and, when the peer sent it, ErrGoAway: a code arrives only in a GoAway.
type SessionError struct {
	Code   uint32
	Remote bool // the peer sent the code
}

func (e *SessionError) Error() string {
	if e.Remote {
		return fmt.Sprintf("polymux: session closed: peer went away (error code %d)", e.Code)
	}
	return fmt.Sprintf("polymux: session closed (error code %d)", e.Code)
}

// Is makes SessionError match ErrSessionClosed and net.ErrClosed, and, when
// the peer sent it, ErrGoAway.
func (e *SessionError) Is(target error) bool {
	return target == ErrSessionClosed || target == net.ErrClosed || (e.Remote && target == ErrGoAway)
}

// refusedError is the error of a stream the peer refused: it matches
// ErrStreamRefused (and so ErrStreamReset), and errors.As finds the code
// of the refusal as a *StreamError.
type refusedError struct{ reset *StreamError }

func (e *refusedError) Error() string {
	return fmt.Sprintf("%s (error code %d)", ErrStreamRefused.msg, e.reset.Code)
}

func (e *refusedError) Unwrap() []error { return []error{ErrStreamRefused, e.reset} }
