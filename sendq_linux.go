package polymux

import (
	"net"
	"syscall"
	"unsafe"
)

// sendQueueProbe returns a function reporting how many bytes written to
// c the peer has not yet acknowledged (SIOCOUTQ), or nil where c has no
// socket to ask. A TLS connection is asked through its TCP connection.
func sendQueueProbe(c net.Conn) func() int {
	if nc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = nc.NetConn()
	}
	rc := rawConn(c)
	if rc == nil {
		return nil
	}
	return func() int {
		n := -1
		rc.Control(func(fd uintptr) {
			var v int32
			if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCOUTQ, uintptr(unsafe.Pointer(&v))); errno == 0 {
				n = int(v)
			}
		})
		return n
	}
}

// rawConn is c's socket, for ioctls; nil where c has none.
func rawConn(c net.Conn) syscall.RawConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}
