package polymuxp2p

import (
	"errors"
	"net"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/polymux/polymux"
)

// streamErr turns the error of a stream call into libp2p's terms, as
// go-libp2p's yamux adapter does for go-yamux's:
//   - a reset with a code: *network.StreamError with the code and the side;
//   - a session ended with a code (the peer's GoAway, or CloseWithError):
//     *network.ConnError with the code and the side;
//   - any other reset, or the session ended without a code: an error that
//     matches network.ErrReset, since go-yamux resets the streams of an
//     ended session and libp2p code looks for that.
//
// The polymux error stays in the chain (TransportError, or wrapped), so
// errors.Is still finds polymux's sentinels, os.ErrDeadlineExceeded and
// net.ErrClosed, and a timeout still reports Timeout.
func streamErr(err error) error {
	if err == nil {
		return nil
	}
	if e := codeErr(err); e != nil {
		return e
	}
	if errors.Is(err, polymux.ErrStreamReset) || errors.Is(err, polymux.ErrSessionClosed) {
		return &resetError{err: err}
	}
	return err
}

// connErr turns the error of a session call (OpenStream, AcceptStream)
// into libp2p's terms: codes as streamErr gives them; a refused or reset
// open matches network.ErrReset; anything else, such as a session closed
// without a code or a denial of the resource manager, is left as it is.
func connErr(err error) error {
	if err == nil {
		return nil
	}
	if e := codeErr(err); e != nil {
		return e
	}
	if errors.Is(err, polymux.ErrStreamReset) {
		return &resetError{err: err}
	}
	return err
}

// codeErr is libp2p's error for one that carries a code, or nil.
func codeErr(err error) error {
	var se *polymux.StreamError
	if errors.As(err, &se) {
		return &network.StreamError{ErrorCode: network.StreamErrorCode(se.Code), Remote: se.Remote, TransportError: err}
	}
	var ce *polymux.SessionError
	if errors.As(err, &ce) {
		return &network.ConnError{ErrorCode: network.ConnErrorCode(ce.Code), Remote: ce.Remote, TransportError: err}
	}
	return nil
}

// resetError is a polymux error that also matches network.ErrReset. It
// keeps the error's Timeout, which a plain fmt.Errorf wrap would hide from
// code that asserts net.Error without errors.As.
type resetError struct{ err error }

func (e *resetError) Error() string   { return network.ErrReset.Error() + ": " + e.err.Error() }
func (e *resetError) Unwrap() []error { return []error{network.ErrReset, e.err} }

// Timeout reports whether the error came from a deadline (a stream open
// the peer never acknowledged in time, for one).
func (e *resetError) Timeout() bool {
	var ne net.Error
	return errors.As(e.err, &ne) && ne.Timeout()
}

// Temporary reports the same as Timeout, for old net.Error users.
func (e *resetError) Temporary() bool { return e.Timeout() }
