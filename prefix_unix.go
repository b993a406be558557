//go:build unix

package polymux

import (
	"io"
	"net"
	"syscall"
)

// readPrefix waits, within conn's read deadline, for the first len(b)
// bytes of conn and copies them into b. On a TCP or Unix socket they are
// peeked (MSG_PEEK) and stay in the socket, so the session reads the
// connection itself, with nothing in between; consumed is then false.
// Other connections (TLS) are read, and consumed is true.
//
// A peek cannot see a FIN behind bytes already there: a client that sends
// fewer than len(b) bytes and closes is held until the deadline (or until
// it is evicted), like one that stays silent.
func readPrefix(conn net.Conn, b []byte) (n int, consumed bool, err error) {
	switch conn.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		n, err = io.ReadFull(conn, b)
		return n, true, err
	}
	rc, err := conn.(syscall.Conn).SyscallConn()
	if err != nil {
		return 0, false, err
	}
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			got, _, e := syscall.Recvfrom(int(fd), b, syscall.MSG_PEEK)
			switch {
			case e == syscall.EINTR:
				continue
			case e == syscall.EAGAIN:
				return false // wait until the socket is readable
			case e != nil:
				perr = e
				return true
			case got == 0:
				perr = io.EOF // closed before sending a byte
				return true
			}
			n = got
			// Fewer bytes than wanted: wait for more, since each new
			// segment makes the socket readable again.
			return n >= len(b)
		}
	})
	if err == nil {
		err = perr
	}
	return n, false, err
}
