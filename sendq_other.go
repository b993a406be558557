//go:build !linux

package polymux

import "net"

// sendQueueProbe is nil where the platform cannot tell how much of a
// socket's send queue is unacknowledged: Close then waits for the peer's
// end of the connection, bounded by the linger.
func sendQueueProbe(net.Conn) func() int { return nil }
