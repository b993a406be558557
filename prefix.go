package polymux

import (
	"net"

	"github.com/polymux/polymux/internal/wire"
)

// prefixReader yields the first bytes a Listener read from a connection
// to detect its protocol, then reads the connection. It sits under the
// session's read buffer, which calls it once per fill (up to 64 KiB), not
// per frame; the session writes to the connection itself, so vectored
// writes are unaffected. Connections whose first bytes can be peeked (TCP
// and Unix sockets, see readPrefix) need no prefixReader at all.
type prefixReader struct {
	prefix [wire.DetectLen]byte
	off    int
	conn   net.Conn
}

func (r *prefixReader) Read(p []byte) (int, error) {
	if r.off < len(r.prefix) {
		n := copy(p, r.prefix[r.off:])
		r.off += n
		return n, nil
	}
	return r.conn.Read(p)
}
