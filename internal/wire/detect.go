package wire

import (
	"fmt"
	"io"
)

// DetectLen is how many of the client's first bytes Detect needs. Four is
// enough because every protocol's opening frame is recognisable by its
// first four bytes, and no more may be required: a muxado client that
// opens a stream with an empty DATA+SYN, or a smux client that sends only
// a SYN, sends 8 bytes and then may wait for the server.
const DetectLen = 4

// Detect picks the codec a client speaks from the first DetectLen bytes it
// sent, which the server peeks (without consuming them) before creating a
// session. Only b[:DetectLen] is looked at. Fewer bytes is an error
// wrapping io.ErrUnexpectedEOF, since it means the client went away before
// sending a frame header; bytes no supported protocol starts with are an
// error wrapping ErrProtocol that shows them in hex for the log.
//
// The rule relies on what a client can send first: yamux any frame (all
// begin with version 0, a type up to 3 and a flags field up to 0x0F),
// smux a SYN or NOP (no payload, so the length bytes are zero), muxado a
// DATA+SYN or a GOAWAY. A muxado DATA+SYN shorter than 64 KiB starts with
// a zero byte like yamux, so muxado is tested first; its byte 3 (type 1
// with the SYN bit, or 0x30) is above the 0x0F yamux allows there.
func Detect(b []byte) (Codec, error) {
	if len(b) < DetectLen {
		return nil, fmt.Errorf("wire: detect needs %d bytes, got %d: %w", DetectLen, len(b), io.ErrUnexpectedEOF)
	}
	b = b[:DetectLen]
	switch {
	case b[3]&0xF0 == 0x10 && b[3]&0x2 != 0, b[3] == 0x30:
		return Muxado(), nil
	case b[0] == 0 && b[1] <= 3 && b[2] == 0 && b[3] <= 0x0F:
		return Yamux(), nil
	case (b[0] == 1 || b[0] == 2) && (b[1] == 0 || b[1] == 3) && b[2] == 0 && b[3] == 0:
		return Smux(int(b[0])), nil
	}
	return nil, fmt.Errorf("wire: %w: unknown protocol: first bytes % x", ErrProtocol, b)
}
