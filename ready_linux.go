package polymux

import (
	"io"
	"net"
	"syscall"
	"unsafe"
)

// readyProbe returns a function reporting how many bytes reading rd can
// return without blocking: what the socket under conn has received
// (FIONREAD), plus what a prefixReader still replays. It is nil where that
// cannot be known: a TLS connection's socket holds records, not the bytes
// they decrypt to. The read loop asks it before reading a payload straight
// into a waiting Read's buffer (takeDirect).
func readyProbe(conn net.Conn, rd io.Reader) func() int {
	replay := func() int { return 0 }
	if pr, ok := rd.(*prefixReader); ok && pr.conn == conn {
		replay = func() int { return len(pr.prefix) - pr.off }
	} else if rd != io.Reader(conn) {
		return nil
	}
	rc := rawConn(conn)
	if rc == nil {
		return nil
	}
	// Made once, so that asking allocates nothing: only the read loop
	// asks, so v needs no lock.
	var v int32
	ask := func(fd uintptr) {
		if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&v))); errno != 0 {
			v = 0
		}
	}
	return func() int {
		v = 0
		rc.Control(ask)
		return int(v) + replay()
	}
}
