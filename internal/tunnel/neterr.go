package tunnel

import (
	"context"
	"errors"
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
