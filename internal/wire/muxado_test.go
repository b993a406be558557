package wire

import (
	"bufio"
	"bytes"
	"io"
	"testing"
)

// muxadoGolden returns every muxado frame kind in both directions. The
// cases marked "as captured" are the bytes shared/protocols/muxado.md
// recorded between real muxado v2 peers.
func muxadoGolden() []goldenFrame {
	return []goldenFrame{
		{name: "DATA+SYN carries hello and opens stream 3 as captured", wire: "000005 12 00000003", tail: []byte("hello"),
			frame: Frame{Type: TypeData, Flags: FlagSYN, Stream: 3, Length: 5}},
		{name: "plain DATA carries hello on stream 3", wire: "000005 10 00000003", tail: []byte("hello"),
			frame: Frame{Type: TypeData, Stream: 3, Length: 5}},
		{name: "DATA+FIN carries the last bytes of stream 2", wire: "000003 11 00000002", tail: []byte("bye"),
			frame: Frame{Type: TypeData, Flags: FlagFIN, Stream: 2, Length: 3}},
		{name: "empty DATA+SYN opens stream 3 at once", wire: "000000 12 00000003",
			frame: Frame{Type: TypeData, Flags: FlagSYN, Stream: 3}},
		{name: "empty DATA+FIN half-closes stream 3", wire: "000000 11 00000003",
			frame: Frame{Type: TypeData, Flags: FlagFIN, Stream: 3}},
		{name: "a SYN window frame becomes an empty DATA+SYN", wire: "000000 12 00000003",
			frame:   Frame{Type: TypeWindow, Flags: FlagSYN, Stream: 3},
			decoded: &Frame{Type: TypeData, Flags: FlagSYN, Stream: 3}},
		{name: "a FIN window frame becomes an empty DATA+FIN as captured", wire: "000000 11 00000003",
			frame:   Frame{Type: TypeWindow, Flags: FlagFIN, Stream: 3},
			decoded: &Frame{Type: TypeData, Flags: FlagFIN, Stream: 3}},
		{name: "DATA of 64 KiB needs the third length byte", wire: "010000 10 00000005", tail: patternBytes(0x10000),
			frame: Frame{Type: TypeData, Stream: 5, Length: 0x10000}},
		{name: "DATA of 16 MiB minus 1 has the largest length", wire: "ffffff 10 00000005", tail: patternBytes(0xFFFFFF),
			frame: Frame{Type: TypeData, Stream: 5, Length: 0xFFFFFF}},
		{name: "DATA on the largest stream id", wire: "000001 10 7fffffff", tail: []byte("x"),
			frame: Frame{Type: TypeData, Stream: 0x7FFFFFFF, Length: 1}},
		{name: "WNDINC adds 5 to stream 3 as captured", wire: "000004 20 00000003 00000005",
			frame: Frame{Type: TypeWindow, Stream: 3, Value: 5}},
		{name: "WNDINC of the largest increment", wire: "000004 20 7fffffff 7fffffff",
			frame: Frame{Type: TypeWindow, Stream: 0x7FFFFFFF, Value: 0x7FFFFFFF}},
		{name: "RST resets stream 3 with flow control error as captured", wire: "000004 00 00000003 00000003",
			frame: Frame{Type: TypeWindow, Flags: FlagRST, Stream: 3, Value: uint32(CodeFlowControl)}},
		{name: "RST with no error code", wire: "000004 00 00000002 00000000",
			frame: Frame{Type: TypeWindow, Flags: FlagRST, Stream: 2}},
		{name: "RST with an unknown code keeps it", wire: "000004 00 00000002 000000ff",
			frame: Frame{Type: TypeWindow, Flags: FlagRST, Stream: 2, Value: 0xFF}},
		{name: "GOAWAY without debug bytes", wire: "000008 30 00000000 00000000 00000000",
			frame: Frame{Type: TypeGoAway}},
		{name: "GOAWAY reports last stream 7 and protocol error", wire: "000008 30 00000000 00000007 00000001",
			frame: Frame{Type: TypeGoAway, LastID: 7, Value: uint32(CodeProtocol)}},
		{name: "GOAWAY with the largest last stream id", wire: "000008 30 00000000 7fffffff 0000000f",
			frame: Frame{Type: TypeGoAway, LastID: 0x7FFFFFFF, Value: 15}},
		{name: "GOAWAY with debug bytes is consumed whole as captured", wire: "000010 30 00000000 00000000 00000000",
			tail: []byte("no error"), decodeOnly: true,
			frame: Frame{Type: TypeGoAway}},
		{name: "unknown type 5 with 3 bytes is skipped as a NOP", wire: "000003 50 00000009", tail: []byte{0xAA, 0xBB, 0xCC},
			decodeOnly: true, frame: Frame{Type: TypeNop}},
		{name: "unknown type 15 with no body on stream 0 is a NOP", wire: "000000 ff 00000000",
			decodeOnly: true, frame: Frame{Type: TypeNop}},
		{name: "undefined DATA flag bits are ignored", wire: "000005 1e 00000003", tail: []byte("hello"),
			decodeOnly: true, frame: Frame{Type: TypeData, Flags: FlagSYN, Stream: 3, Length: 5}},
		{name: "DATA with SYN and FIN together is accepted as muxado does", wire: "000000 13 00000003",
			decodeOnly: true, frame: Frame{Type: TypeData, Flags: FlagSYN | FlagFIN, Stream: 3}},
		{name: "flag bits on WNDINC are ignored", wire: "000004 2f 00000003 00000005",
			decodeOnly: true, frame: Frame{Type: TypeWindow, Stream: 3, Value: 5}},
		{name: "flag bits on RST are ignored", wire: "000004 0f 00000003 00000004",
			decodeOnly: true, frame: Frame{Type: TypeWindow, Flags: FlagRST, Stream: 3, Value: 4}},
		{name: "the reserved bit of an increment is masked", wire: "000004 20 00000003 80000005",
			decodeOnly: true, frame: Frame{Type: TypeWindow, Stream: 3, Value: 5}},
		{name: "the reserved bit of the GOAWAY last id is masked", wire: "000008 30 00000000 80000007 00000002",
			decodeOnly: true, frame: Frame{Type: TypeGoAway, LastID: 7, Value: 2}},
	}
}

// muxadoNext is a frame decoded after each golden case to prove the codec
// consumed exactly one frame (including any debug or unknown body).
const muxadoNext = "000004 20 00000001 00000001"

// muxadoNextFrame is what muxadoNext decodes to.
var muxadoNextFrame = Frame{Type: TypeWindow, Stream: 1, Value: 1}

// TestMuxadoGoldenFramesEncodeExactly checks every muxado frame kind
// against bytes captured between real muxado v2 peers.
func TestMuxadoGoldenFramesEncodeExactly(t *testing.T) {
	testAppendGolden(t, Muxado(), muxadoGolden())
}

// TestMuxadoGoldenFramesDecodeExactly checks the reverse direction, and
// that exactly one frame is consumed: a DATA payload stays in the reader,
// GOAWAY debug bytes and unknown frames do not.
func TestMuxadoGoldenFramesDecodeExactly(t *testing.T) {
	testReadGolden(t, Muxado(), muxadoGolden(), muxadoNext, muxadoNextFrame)
}

// TestMuxadoReadFrameRejectsProtocolViolations checks every frame error
// muxado kills a session for, plus the reserved stream id bit, and how the
// end of input is reported.
func TestMuxadoReadFrameRejectsProtocolViolations(t *testing.T) {
	testReadErrors(t, Muxado(), []decodeError{
		{"RST with length 0", "000000 00 00000003", ErrProtocol},
		{"RST with length 3", "000003 00 00000003 000003", ErrProtocol},
		{"RST with length 8", "000008 00 00000003 00000003 00000000", ErrProtocol},
		{"RST on stream 0", "000004 00 00000000 00000003", ErrProtocol},
		{"DATA on stream 0", "000005 12 00000000 68656c6c6f", ErrProtocol},
		{"empty DATA+FIN on stream 0", "000000 11 00000000", ErrProtocol},
		{"WNDINC with length 0", "000000 20 00000003", ErrProtocol},
		{"WNDINC with length 8", "000008 20 00000003 00000005 00000000", ErrProtocol},
		{"WNDINC on stream 0", "000004 20 00000000 00000005", ErrProtocol},
		{"WNDINC of zero", "000004 20 00000003 00000000", ErrProtocol},
		{"WNDINC of only the reserved bit", "000004 20 00000003 80000000", ErrProtocol},
		{"GOAWAY on stream 1", "000008 30 00000001 00000000 00000000", ErrProtocol},
		{"GOAWAY with length 0", "000000 30 00000000", ErrProtocol},
		{"GOAWAY with length 7", "000007 30 00000000 00000000 000000", ErrProtocol},
		{"DATA on a stream with the reserved bit", "000005 10 80000003 68656c6c6f", ErrProtocol},
		{"RST on a stream with the reserved bit", "000004 00 80000003 00000003", ErrProtocol},
		{"GOAWAY on the reserved bit alone", "000008 30 80000000 00000000 00000000", ErrProtocol},
		{"an unknown type on a stream with the reserved bit", "000000 50 ffffffff", ErrProtocol},
		{"empty input is a clean end", "", io.EOF},
		{"one byte is a truncated header", "00", io.ErrUnexpectedEOF},
		{"seven bytes are a truncated header", "000005 12 000000", io.ErrUnexpectedEOF},
		{"RST without its code is truncated", "000004 00 00000003", io.ErrUnexpectedEOF},
		{"RST with half its code is truncated", "000004 00 00000003 0000", io.ErrUnexpectedEOF},
		{"WNDINC without its increment is truncated", "000004 20 00000003 000000", io.ErrUnexpectedEOF},
		{"GOAWAY without its body is truncated", "000008 30 00000000", io.ErrUnexpectedEOF},
		{"GOAWAY with half its body is truncated", "000008 30 00000000 00000007", io.ErrUnexpectedEOF},
		{"GOAWAY missing debug bytes is truncated", "000010 30 00000000 00000000 00000000 6e6f20", io.ErrUnexpectedEOF},
		{"an unknown type missing body bytes is truncated", "000003 50 00000009 aabb", io.ErrUnexpectedEOF},
	})
}

// TestMuxadoAppendFrameRefusesWhatMuxadoCannotExpress checks that nothing
// the engine asks for is silently lost or sent in a form that kills the
// peer's session.
func TestMuxadoAppendFrameRefusesWhatMuxadoCannotExpress(t *testing.T) {
	testAppendErrors(t, Muxado(), []encodeError{
		{"data on stream 0", Frame{Type: TypeData, Length: 5}},
		{"data on a stream with the reserved bit", Frame{Type: TypeData, Stream: 0x80000003, Length: 5}},
		{"data longer than 24 bits", Frame{Type: TypeData, Stream: 3, Length: 0x1000000}},
		{"data with SYN and FIN together", Frame{Type: TypeData, Flags: FlagSYN | FlagFIN, Stream: 3}},
		{"data with ACK, since muxado opens without an answer", Frame{Type: TypeData, Flags: FlagACK, Stream: 3}},
		{"data with RST", Frame{Type: TypeData, Flags: FlagRST, Stream: 3}},
		{"a window frame on stream 0", Frame{Type: TypeWindow, Value: 5}},
		{"RST on stream 0", Frame{Type: TypeWindow, Flags: FlagRST, Value: 3}},
		{"a window frame on a stream with the reserved bit", Frame{Type: TypeWindow, Stream: 0x80000000, Value: 5}},
		{"ACK", Frame{Type: TypeWindow, Flags: FlagACK, Stream: 3}},
		{"SYN with ACK", Frame{Type: TypeWindow, Flags: FlagSYN | FlagACK, Stream: 3}},
		{"SYN and FIN together", Frame{Type: TypeWindow, Flags: FlagSYN | FlagFIN, Stream: 3}},
		{"RST with FIN", Frame{Type: TypeWindow, Flags: FlagRST | FlagFIN, Stream: 3}},
		{"SYN with a window, since muxado cannot open with one", Frame{Type: TypeWindow, Flags: FlagSYN, Stream: 3, Value: 5}},
		{"FIN with a window", Frame{Type: TypeWindow, Flags: FlagFIN, Stream: 3, Value: 1}},
		{"a zero increment, which kills the peer's session", Frame{Type: TypeWindow, Stream: 3}},
		{"an increment with the reserved bit", Frame{Type: TypeWindow, Stream: 3, Value: 0x80000000}},
		{"go away with a last id using the reserved bit", Frame{Type: TypeGoAway, LastID: 0x80000000}},
		{"ping, since muxado has none on the wire", Frame{Type: TypePing, Flags: FlagSYN, Value: 1}},
		{"NOP", Frame{Type: TypeNop}},
		{"an unknown frame type", Frame{Type: Type(99), Stream: 3}},
	})
}

// zeroReader yields n zero bytes without allocating, standing in for a
// peer that sends a huge GOAWAY debug blob.
type zeroReader struct{ n int }

// Read fills p with zeros until n bytes have been produced.
func (z *zeroReader) Read(p []byte) (int, error) {
	if z.n == 0 {
		return 0, io.EOF
	}
	n := min(len(p), z.n)
	clear(p[:n])
	z.n -= n
	return n, nil
}

// TestMuxadoSkipsLargestGoAwayDebugWithoutAllocating checks that a peer
// cannot make us buffer 16 MiB by sending a huge GOAWAY debug blob.
func TestMuxadoSkipsLargestGoAwayDebugWithoutAllocating(t *testing.T) {
	header := hexWire(t, "ffffff 30 00000000 00000009 00000000")
	next := hexWire(t, muxadoNext)
	hr, zr, nr := bytes.NewReader(nil), &zeroReader{}, bytes.NewReader(nil)
	// io.MultiReader allocates, so chain the three parts by hand.
	parts := &chainReader{}
	r := bufio.NewReaderSize(parts, MinReadBuffer)
	run := func() {
		hr.Reset(header)
		zr.n = 0xFFFFFF - 8
		nr.Reset(next)
		*parts = chainReader{rs: [3]io.Reader{hr, zr, nr}}
		r.Reset(parts)
		f, err := Muxado().ReadFrame(r)
		if err != nil || f != (Frame{Type: TypeGoAway, LastID: 9}) {
			t.Fatalf("ReadFrame = %v, %v", f, err)
		}
		f, err = Muxado().ReadFrame(r)
		if err != nil || f != muxadoNextFrame {
			t.Fatalf("the frame after the debug bytes: %v, %v", f, err)
		}
	}
	if n := testing.AllocsPerRun(2, run); n != 0 {
		t.Fatalf("skipping 16 MiB of debug allocates %v times", n)
	}
}

// chainReader reads its readers one after the other, like io.MultiReader
// but reusable without allocating.
type chainReader struct {
	rs [3]io.Reader
	i  int
}

// Read reads from the current reader, moving on at its io.EOF.
func (c *chainReader) Read(p []byte) (int, error) {
	for c.i < len(c.rs) {
		n, err := c.rs[c.i].Read(p)
		if err == io.EOF {
			c.i++
			err = nil
		}
		if n > 0 || err != nil {
			return n, err
		}
	}
	return 0, io.EOF
}

// TestMuxadoGoAwayDebugIsSkippedEvenPastTheReadBuffer checks debug bytes
// that do not fit in the smallest reader the codec supports.
func TestMuxadoGoAwayDebugIsSkippedEvenPastTheReadBuffer(t *testing.T) {
	// 200 debug bytes do not fit in a MinReadBuffer reader at once.
	input := append(hexWire(t, "0000d0 30 00000000 00000003 00000000"), patternBytes(200)...)
	input = append(input, hexWire(t, muxadoNext)...)
	r := minReader(input)
	if f, err := Muxado().ReadFrame(r); err != nil || f != (Frame{Type: TypeGoAway, LastID: 3}) {
		t.Fatalf("ReadFrame = %v, %v", f, err)
	}
	if f, err := Muxado().ReadFrame(r); err != nil || f != muxadoNextFrame {
		t.Fatalf("the frame after the debug bytes: %v, %v", f, err)
	}
}

// TestMuxadoAppendFrameIgnoresFieldsTheFrameDoesNotCarry pins down the
// fields muxado drops, which the engine may leave set.
func TestMuxadoAppendFrameIgnoresFieldsTheFrameDoesNotCarry(t *testing.T) {
	cases := []struct {
		name  string
		frame Frame
		wire  string
	}{
		{"a window and last id on data", Frame{Type: TypeData, Stream: 3, Length: 5, Value: 1, Window: 2, LastID: 3}, "000005 10 00000003"},
		{"a length on RST", Frame{Type: TypeWindow, Flags: FlagRST, Stream: 3, Value: 4, Length: 9}, "000004 00 00000003 00000004"},
		{"a stream on go away", Frame{Type: TypeGoAway, Stream: 3, LastID: 1}, "000008 30 00000000 00000001 00000000"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Muxado().AppendFrame(nil, tc.frame)
			if err != nil || !bytes.Equal(got, hexWire(t, tc.wire)) {
				t.Fatalf("AppendFrame(%v) = % x, %v; want %s", tc.frame, got, err, tc.wire)
			}
		})
	}
}

// TestMuxadoCodecDoesNotAllocatePerFrame holds the codec to the Codec
// contract: the read and write loops run per frame.
func TestMuxadoCodecDoesNotAllocatePerFrame(t *testing.T) {
	testNoAllocs(t, Muxado(), muxadoGolden())
}

// TestMuxadoDescribesItself pins the Caps table, the only place the engine
// learns how muxado behaves.
func TestMuxadoDescribesItself(t *testing.T) {
	first, second := Muxado(), Muxado()
	if first != second || first.Name() != "muxado2" {
		t.Fatalf("Muxado() must be one shared codec named muxado2, got %q", first.Name())
	}
	if first.Caps() != second.Caps() {
		t.Fatal("Caps must return the shared table, not a copy")
	}
	want := Caps{
		Window:             WindowDelta,
		InitialWindow:      262144,
		MaxPayload:         0xFFFFFF,
		FirstID:            [2]uint32{3, 2},
		MaxStreamID:        0x7FFFFFFF,
		Reset:              true,
		GoAway:             true,
		GoAwayLastID:       true,
		GoAwayKeepsStreams: true,
		ReasonCodes:        true,
		SynFinApart:        true,
		OverrunResets:      true,
		RejectUnknownData:  true,
	}
	if got := *Muxado().Caps(); got != want {
		t.Fatalf("caps = %+v, want %+v", got, want)
	}
}
