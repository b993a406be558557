package tunnel

import (
	"log/slog"

	"context"
	"errors"
	"github.com/polymux/polymux"
	"net"
	"os"
	"syscall"
)

// dialCode classifies a failed dial as a reply code, which a SOCKS5 client
// then sees as the matching reply.
func dialCode(err error) string {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return codeRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return codeNetUnreach
	case errors.Is(err, syscall.EHOSTUNREACH), errors.As(err, &dnsErr), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return codeHostUnreach
	}
	return codeFailed
}

// isAddrInUse reports whether a listen failed because the address is taken.
func isAddrInUse(err error) bool { return errors.Is(err, syscall.EADDRINUSE) }

// streamFailure says, for a log line, why a forwarded connection's stream
// failed, in polymux's terms where it is one of its errors.
func streamFailure(err error) string {
	switch {
	case errors.Is(err, polymux.ErrStreamRefused):
		return "the other side refused the stream (busy, or going away): " + err.Error()
	case errors.Is(err, polymux.ErrStreamReset):
		return "the stream was reset: " + err.Error()
	case errors.Is(err, polymux.ErrSessionClosed):
		return "the session ended: " + err.Error()
	case errors.Is(err, polymux.ErrTimeout):
		return "timed out: " + err.Error()
	}
	return err.Error()
}

// logEnd logs, at debug level, a forwarded connection that ended in a
// failure; a clean end, or a refusal (logged where it arrived), says
// nothing.
func logEnd(log *slog.Logger, target string, err error) {
	var re *replyError
	if err == nil || errors.As(err, &re) {
		return
	}
	log.Debug("forwarded connection failed", "target", target, "err", streamFailure(err))
}
