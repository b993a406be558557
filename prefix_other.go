//go:build !unix

package polymux

import (
	"io"
	"net"
)

// readPrefix waits, within conn's read deadline, for the first len(b)
// bytes of conn and reads them into b. They are consumed (consumed is
// always true): peeking a socket needs MSG_PEEK, used on unix systems.
func readPrefix(conn net.Conn, b []byte) (n int, consumed bool, err error) {
	n, err = io.ReadFull(conn, b)
	return n, true, err
}
