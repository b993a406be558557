package wire

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// detectCase is the complete first frame a client sends, and the codec
// Detect must choose from it ("" when it must refuse it).
type detectCase struct {
	name  string
	first string // hex, spaces allowed
	want  string // codec name, or "" for an error
}

// openingFrames are real first frames of every protocol, plus bytes no
// supported client sends first. The frames are whole so that the test can
// also check that the chosen codec decodes them.
var openingFrames = []detectCase{
	{"yamux WindowUpdate+SYN opening stream 1", "00 01 0001 00000001 00040000", "yamux"},
	{"yamux Data+SYN opening stream 1 with 5 bytes", "00 00 0001 00000001 00000005 68656c6c6f", "yamux"},
	{"yamux Ping request", "00 02 0001 00000000 00000007", "yamux"},
	{"yamux GoAway from a client that opens nothing", "00 03 0000 00000000 00000000", "yamux"},
	{"smux v1 SYN opening stream 3", "01 00 0000 03000000", "smux1"},
	{"smux v2 SYN opening stream 3", "02 00 0000 03000000", "smux2"},
	{"smux v1 NOP keepalive", "01 03 0000 00000000", "smux1"},
	{"smux v2 NOP keepalive", "02 03 0000 00000000", "smux2"},
	{"muxado empty DATA+SYN opening stream 3", "000000 12 00000003", "muxado2"},
	{"muxado DATA+SYN with 5 bytes", "000005 12 00000003 68656c6c6f", "muxado2"},
	{"muxado DATA+SYN with 65535 bytes", "00ffff 12 00000003", "muxado2"},
	{"muxado DATA+SYN with 64 KiB, whose first byte is not zero", "010000 12 00000003", "muxado2"},
	{"muxado DATA+SYN with the largest length", "ffffff 12 00000003", "muxado2"},
	{"muxado DATA with SYN and FIN together", "000000 13 00000003", "muxado2"},
	{"muxado GOAWAY from a client that opens nothing", "000008 30 00000000 00000000 00000000", "muxado2"},
	{"a TLS ClientHello", "16 03 01 00 a5 01 00 00 a1 03 03", ""},
	{"an HTTP request", "474554202f20485454502f312e310d0a", ""},
	{"an SSH banner", "5353482d322e302d", ""},
	{"the HTTP/2 preface", "505249202a20485454502f322e30", ""},
	{"smux version 3", "03 00 0000 03000000", ""},
	{"smux PSH, which no client sends first", "01 02 0500 03000000 68656c6c6f", ""},
	{"smux SYN carrying a length", "01 00 0100 03000000 00", ""},
	{"muxado DATA without SYN", "000005 10 00000003 68656c6c6f", ""},
	{"muxado 64 KiB DATA without SYN", "010000 10 00000003", ""},
	{"muxado WNDINC", "000004 20 00000003 00000005", ""},
	{"yamux type 4", "00 04 0000 00000000 00000000", ""},
	{"yamux flags above RST", "00 00 0010 00000001 00000000", ""},
	{"all ones", "ffffffff", ""},
}

// TestDetectRecognisesEachProtocolsFirstFrame runs the rule on the frames
// real clients open with, and on bytes it must turn away.
func TestDetectRecognisesEachProtocolsFirstFrame(t *testing.T) {
	for _, tc := range openingFrames {
		t.Run(tc.name, func(t *testing.T) {
			first := hexWire(t, tc.first)
			c, err := Detect(first)
			if tc.want == "" {
				if c != nil || !errors.Is(err, ErrProtocol) {
					t.Fatalf("Detect(% x) = %v, %v; want ErrProtocol", first, c, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Detect(% x): %v", first, err)
			}
			if c.Name() != tc.want {
				t.Fatalf("Detect(% x) = %s, want %s", first, c.Name(), tc.want)
			}
			// Only the first DetectLen bytes may matter.
			if c2, err := Detect(first[:DetectLen]); err != nil || c2 != c {
				t.Fatalf("Detect of the first %d bytes alone = %v, %v", DetectLen, c2, err)
			}
			// The codec chosen must accept the frame that chose it (only
			// the header of the big muxado frames is here; their payload
			// is left unread).
			if _, err := c.ReadFrame(minReader(first)); err != nil {
				t.Fatalf("%s cannot read the frame it was chosen for: %v", c.Name(), err)
			}
		})
	}
}

// All-zero bytes start a yamux Data header (version 0, type 0, no flags),
// so the rule must take them for yamux; the yamux codec then refuses the
// frame (stream 0), which is where such a client gets turned away.
func TestDetectTakesAllZeroBytesForYamux(t *testing.T) {
	c, err := Detect(make([]byte, 12))
	if err != nil || c != Yamux() {
		t.Fatalf("Detect(zeros) = %v, %v; want yamux", c, err)
	}
}

// TestDetectShowsUnknownBytesInHex checks that the error gives an operator
// what is needed to identify a stray client.
func TestDetectShowsUnknownBytesInHex(t *testing.T) {
	_, err := Detect([]byte{0x16, 0x03, 0x01, 0x00, 0xa5})
	if err == nil || !strings.Contains(err.Error(), "16 03 01 00") {
		t.Fatalf("error %v does not show the first bytes in hex", err)
	}
	if strings.Contains(err.Error(), "a5") {
		t.Fatalf("error %v shows more than the %d bytes Detect looks at", err, DetectLen)
	}
}

// TestDetectNeedsDetectLenBytes checks that a client that hung up early is
// an error, not a guess.
func TestDetectNeedsDetectLenBytes(t *testing.T) {
	for _, b := range [][]byte{nil, {}, {0}, {0, 0, 0}, {0x00, 0x00, 0x00}} {
		c, err := Detect(b)
		if c != nil || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("Detect(% x) = %v, %v; want io.ErrUnexpectedEOF", b, c, err)
		}
	}
}

// TestDetectDoesNotAllocateOnSuccess keeps the accept path cheap: Detect
// runs once per connection.
func TestDetectDoesNotAllocateOnSuccess(t *testing.T) {
	b := []byte{0x00, 0x00, 0x00, 0x12}
	if n := testing.AllocsPerRun(100, func() { _, _ = Detect(b) }); n != 0 {
		t.Fatalf("Detect allocates %v times", n)
	}
}
