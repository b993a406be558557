package wire

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"
)

// goldenFrame is one frame in both of its forms. The smux and muxado
// tests share it, and their fuzz targets use the same tables as seeds.
type goldenFrame struct {
	name string
	// wire is the hex (spaces allowed) of what AppendFrame writes for
	// frame and what ReadFrame consumes before any DATA payload.
	wire string
	// tail follows wire in the input: a DATA payload, which ReadFrame
	// must leave in the reader, or bytes ReadFrame must skip (GOAWAY
	// debug, the body of an unknown frame type).
	tail []byte
	// frame is what AppendFrame encodes and, unless decoded is set, what
	// ReadFrame returns.
	frame Frame
	// decoded is what ReadFrame returns when it differs from frame.
	decoded *Frame
	// decodeOnly marks wire bytes AppendFrame never produces (captured
	// frames with debug bytes, bits the decoder ignores).
	decodeOnly bool
}

// want is the frame ReadFrame must return for g.wire.
func (g goldenFrame) want() Frame {
	if g.decoded != nil {
		return *g.decoded
	}
	return g.frame
}

// input is the complete encoding of g: header, fixed body and tail.
func (g goldenFrame) input(t testing.TB) []byte {
	return append(hexWire(t, g.wire), g.tail...)
}

// hexWire decodes hex written with spaces for readability.
func hexWire(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// patternBytes returns n bytes that are not all equal, so a payload read
// from the wrong offset is noticed.
func patternBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

// minReader reads b through the smallest buffer codecs must support, so
// the tests prove that MinReadBuffer is enough.
func minReader(b []byte) *bufio.Reader {
	return bufio.NewReaderSize(bytes.NewReader(b), MinReadBuffer)
}

// testAppendGolden checks that AppendFrame writes exactly each case's
// bytes, after whatever dst already holds.
func testAppendGolden(t *testing.T, c Codec, cases []goldenFrame) {
	t.Helper()
	for _, g := range cases {
		if g.decodeOnly {
			continue
		}
		t.Run(g.name, func(t *testing.T) {
			want := hexWire(t, g.wire)
			if len(want) > MaxEncodedLen {
				t.Fatalf("golden encoding is %d bytes, more than MaxEncodedLen", len(want))
			}
			prefix := []byte{0xEE, 0xEF}
			got, err := c.AppendFrame(prefix, g.frame)
			if err != nil {
				t.Fatalf("AppendFrame(%v): %v", g.frame, err)
			}
			if !bytes.Equal(got[:2], prefix) || !bytes.Equal(got[2:], want) {
				t.Fatalf("AppendFrame(%v) = % x, want ee ef % x", g.frame, got, want)
			}
		})
	}
}

// testReadGolden checks that ReadFrame returns each case's frame, leaves a
// DATA payload in the reader, skips any other tail, and stops exactly at
// the end of the frame, so that next (the hex of a frame that decodes to
// nextFrame) is read correctly after it.
func testReadGolden(t *testing.T, c Codec, cases []goldenFrame, next string, nextFrame Frame) {
	t.Helper()
	for _, g := range cases {
		t.Run(g.name, func(t *testing.T) {
			input := append(g.input(t), hexWire(t, next)...)
			r := minReader(input)
			got, err := c.ReadFrame(r)
			if err != nil {
				t.Fatalf("ReadFrame(% x): %v", input, err)
			}
			if got != g.want() {
				t.Fatalf("ReadFrame = %v, want %v", got, g.want())
			}
			if got.Type == TypeData {
				if int(got.Length) != len(g.tail) {
					t.Fatalf("Length %d, but the case has %d payload bytes", got.Length, len(g.tail))
				}
				payload := make([]byte, got.Length)
				if _, err := io.ReadFull(r, payload); err != nil {
					t.Fatalf("reading the payload left in the reader: %v", err)
				}
				if !bytes.Equal(payload, g.tail) {
					t.Fatalf("payload left in the reader differs from the one sent")
				}
			}
			got, err = c.ReadFrame(r)
			if err != nil || got != nextFrame {
				t.Fatalf("the frame after it: %v, %v; want %v", got, err, nextFrame)
			}
			if _, err := c.ReadFrame(r); err != io.EOF {
				t.Fatalf("ReadFrame at the end of the input: %v, want io.EOF", err)
			}
		})
	}
}

// decodeError is an input ReadFrame must refuse with an error matching
// want (checked with errors.Is).
type decodeError struct {
	name string
	wire string
	want error
}

// testReadErrors checks ReadFrame's errors, and that a protocol error
// consumes nothing: the caller may still log the offending bytes.
func testReadErrors(t *testing.T, c Codec, cases []decodeError) {
	t.Helper()
	for _, e := range cases {
		t.Run(e.name, func(t *testing.T) {
			input := hexWire(t, e.wire)
			r := minReader(input)
			f, err := c.ReadFrame(r)
			if !errors.Is(err, e.want) {
				t.Fatalf("ReadFrame(% x) = %v, %v; want an error matching %v", input, f, err, e.want)
			}
			if f != (Frame{}) {
				t.Fatalf("ReadFrame returned frame %v with its error", f)
			}
			if e.want == ErrProtocol {
				if !strings.HasPrefix(err.Error(), c.Name()+": ") {
					t.Fatalf("error %q does not name the codec", err)
				}
				if r.Buffered() != len(input) {
					t.Fatalf("a protocol error consumed %d bytes", len(input)-r.Buffered())
				}
			}
		})
	}
}

// encodeError is a frame AppendFrame must refuse.
type encodeError struct {
	name  string
	frame Frame
}

// testAppendErrors checks that each frame is refused with ErrUnsupported
// and that dst comes back unchanged, contents and length.
func testAppendErrors(t *testing.T, c Codec, cases []encodeError) {
	t.Helper()
	for _, e := range cases {
		t.Run(e.name, func(t *testing.T) {
			dst := make([]byte, 3, 64)
			copy(dst, "abc")
			got, err := c.AppendFrame(dst, e.frame)
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("AppendFrame(%v) = % x, %v; want ErrUnsupported", e.frame, got, err)
			}
			if string(got) != "abc" || string(dst[:cap(dst)][3:6]) != "\x00\x00\x00" {
				t.Fatalf("AppendFrame changed dst: % x", got)
			}
		})
	}
}

// testNoAllocs checks that encoding and decoding each golden frame whose
// tail is small allocates nothing, as the Codec contract promises.
func testNoAllocs(t *testing.T, c Codec, cases []goldenFrame) {
	t.Helper()
	buf := make([]byte, 0, MaxEncodedLen)
	br := bytes.NewReader(nil)
	r := bufio.NewReaderSize(br, MinReadBuffer)
	for _, g := range cases {
		if len(g.tail) > 1024 {
			continue
		}
		input := g.input(t)
		if !g.decodeOnly {
			n := testing.AllocsPerRun(100, func() {
				_, _ = c.AppendFrame(buf[:0], g.frame)
			})
			if n != 0 {
				t.Errorf("%s: AppendFrame allocates %v times", g.name, n)
			}
		}
		n := testing.AllocsPerRun(100, func() {
			br.Reset(input)
			r.Reset(br)
			_, _ = c.ReadFrame(r)
		})
		if n != 0 {
			t.Errorf("%s: ReadFrame allocates %v times", g.name, n)
		}
	}
}

// smuxGolden returns every smux frame kind in both directions for one
// version. The first PSH and SYN are the captures in
// shared/protocols/smux.md; the rest follow the same layout.
func smuxGolden(version int) []goldenFrame {
	if version == 1 {
		return []goldenFrame{
			{name: "SYN opens stream 3", wire: "01 00 0000 03000000",
				frame: Frame{Type: TypeWindow, Flags: FlagSYN, Stream: 3}},
			{name: "SYN on the largest stream id", wire: "01 00 0000 ffffffff",
				frame: Frame{Type: TypeWindow, Flags: FlagSYN, Stream: math.MaxUint32}},
			{name: "stream id is little-endian", wire: "01 00 0000 04030201",
				frame: Frame{Type: TypeWindow, Flags: FlagSYN, Stream: 0x01020304}},
			{name: "FIN half-closes stream 3", wire: "01 01 0000 03000000",
				frame: Frame{Type: TypeWindow, Flags: FlagFIN, Stream: 3}},
			{name: "PSH carries hello on stream 3 as captured", wire: "01 02 0500 03000000", tail: []byte("hello"),
				frame: Frame{Type: TypeData, Stream: 3, Length: 5}},
			{name: "empty PSH is a zero-length data frame", wire: "01 02 0000 05000000",
				frame: Frame{Type: TypeData, Stream: 5}},
			{name: "PSH of 65535 bytes has the largest length", wire: "01 02 ffff 07000000", tail: patternBytes(65535),
				frame: Frame{Type: TypeData, Stream: 7, Length: 65535}},
			{name: "length is little-endian", wire: "01 02 0201 09000000", tail: patternBytes(0x0102),
				frame: Frame{Type: TypeData, Stream: 9, Length: 0x0102}},
			{name: "NOP keeps the session alive on stream 0", wire: "01 03 0000 00000000",
				frame: Frame{Type: TypeNop}},
		}
	}
	return []goldenFrame{
		{name: "SYN opens stream 3 as captured", wire: "02 00 0000 03000000",
			frame: Frame{Type: TypeWindow, Flags: FlagSYN, Stream: 3}},
		{name: "SYN on the largest stream id", wire: "02 00 0000 ffffffff",
			frame: Frame{Type: TypeWindow, Flags: FlagSYN, Stream: math.MaxUint32}},
		{name: "FIN half-closes stream 3", wire: "02 01 0000 03000000",
			frame: Frame{Type: TypeWindow, Flags: FlagFIN, Stream: 3}},
		{name: "PSH carries hello on stream 3", wire: "02 02 0500 03000000", tail: []byte("hello"),
			frame: Frame{Type: TypeData, Stream: 3, Length: 5}},
		{name: "empty PSH is a zero-length data frame", wire: "02 02 0000 05000000",
			frame: Frame{Type: TypeData, Stream: 5}},
		{name: "PSH of 65535 bytes has the largest length", wire: "02 02 ffff 07000000", tail: patternBytes(65535),
			frame: Frame{Type: TypeData, Stream: 7, Length: 65535}},
		{name: "NOP keeps the session alive on stream 0", wire: "02 03 0000 00000000",
			frame: Frame{Type: TypeNop}},
		{name: "UPD reports consumed 5 and window 65536 as captured", wire: "02 04 0800 03000000 05000000 00000100",
			frame: Frame{Type: TypeWindow, Stream: 3, Value: 5, Window: 65536}},
		{name: "UPD values are little-endian", wire: "02 04 0800 0b000000 04030201 0d0c0b0a",
			frame: Frame{Type: TypeWindow, Stream: 11, Value: 0x01020304, Window: 0x0a0b0c0d}},
		{name: "UPD carries a wrapped consumed count and a zero window", wire: "02 04 0800 09000000 ffffffff 00000000",
			frame: Frame{Type: TypeWindow, Stream: 9, Value: math.MaxUint32}},
	}
}

// smuxNext is a frame decoded after each golden case to prove the codec
// consumed exactly one frame.
func smuxNext(version int) (string, Frame) {
	if version == 1 {
		return "01 03 0000 00000000", Frame{Type: TypeNop}
	}
	return "02 03 0000 00000000", Frame{Type: TypeNop}
}

// TestSmuxGoldenFramesEncodeExactly checks every smux command against
// bytes a real peer sends or accepts.
func TestSmuxGoldenFramesEncodeExactly(t *testing.T) {
	for _, v := range []int{1, 2} {
		t.Run(Smux(v).Name(), func(t *testing.T) {
			testAppendGolden(t, Smux(v), smuxGolden(v))
		})
	}
}

// TestSmuxGoldenFramesDecodeExactly checks the reverse direction, and that
// exactly one frame (never a PSH payload) is consumed.
func TestSmuxGoldenFramesDecodeExactly(t *testing.T) {
	for _, v := range []int{1, 2} {
		t.Run(Smux(v).Name(), func(t *testing.T) {
			next, nextFrame := smuxNext(v)
			testReadGolden(t, Smux(v), smuxGolden(v), next, nextFrame)
		})
	}
}

// TestSmuxReadFrameRejectsProtocolViolations checks every rule smux 1.5.56
// enforces, in both versions; "%v" in a wire string stands for the version
// byte of the codec under test.
func TestSmuxReadFrameRejectsProtocolViolations(t *testing.T) {
	both := []decodeError{
		{"a yamux header is not smux", "00 00 0000 03000000", ErrProtocol},
		{"version 3 does not exist", "03 00 0000 03000000", ErrProtocol},
		{"command 5 is unknown", "%v 05 0000 03000000", ErrProtocol},
		{"command 255 is unknown", "%v ff 0000 03000000", ErrProtocol},
		{"SYN must not carry a payload", "%v 00 0100 03000000 00", ErrProtocol},
		{"FIN must not carry a payload", "%v 01 0200 03000000 0000", ErrProtocol},
		{"NOP must not carry a payload", "%v 03 0100 00000000 00", ErrProtocol},
		{"SYN must not open stream 0", "%v 00 0000 00000000", ErrProtocol},
		{"FIN must not name stream 0", "%v 01 0000 00000000", ErrProtocol},
		{"PSH must not carry data for stream 0", "%v 02 0500 00000000 68656c6c6f", ErrProtocol},
		{"NOP must be on stream 0", "%v 03 0000 03000000", ErrProtocol},
		{"empty input is a clean end", "", io.EOF},
		{"one byte is a truncated header", "%v", io.ErrUnexpectedEOF},
		{"seven bytes are a truncated header", "%v 02 0500 030000", io.ErrUnexpectedEOF},
	}
	v1 := []decodeError{
		{"a v2 header is refused by the v1 codec", "02 00 0000 03000000", ErrProtocol},
		{"UPD does not exist in v1", "01 04 0800 03000000 05000000 00000100", ErrProtocol},
	}
	v2 := []decodeError{
		{"a v1 header is refused by the v2 codec", "01 00 0000 03000000", ErrProtocol},
		{"UPD with length 0", "02 04 0000 03000000", ErrProtocol},
		{"UPD with length 7", "02 04 0700 03000000 05000000 000001", ErrProtocol},
		{"UPD with length 9", "02 04 0900 03000000 05000000 00000100 00", ErrProtocol},
		{"UPD must not name stream 0", "02 04 0800 00000000 05000000 00000100", ErrProtocol},
		{"UPD without its body is truncated", "02 04 0800 03000000", io.ErrUnexpectedEOF},
		{"UPD with half its body is truncated", "02 04 0800 03000000 05000000", io.ErrUnexpectedEOF},
		{"UPD one byte short is truncated", "02 04 0800 03000000 05000000 000001", io.ErrUnexpectedEOF},
	}
	for _, v := range []int{1, 2} {
		t.Run(Smux(v).Name(), func(t *testing.T) {
			cases := v1
			if v == 2 {
				cases = v2
			}
			for _, e := range both {
				e.wire = strings.ReplaceAll(e.wire, "%v", fmt.Sprintf("%02x", v))
				cases = append(cases, e)
			}
			testReadErrors(t, Smux(v), cases)
		})
	}
}

// TestSmuxAppendFrameRefusesWhatSmuxCannotExpress checks that nothing the
// engine asks for is silently lost: smux has no ACK, RST, ping or GoAway.
func TestSmuxAppendFrameRefusesWhatSmuxCannotExpress(t *testing.T) {
	both := []encodeError{
		{"data with SYN", Frame{Type: TypeData, Flags: FlagSYN, Stream: 3, Length: 5}},
		{"data with FIN", Frame{Type: TypeData, Flags: FlagFIN, Stream: 3}},
		{"data on stream 0", Frame{Type: TypeData, Length: 5}},
		{"data longer than 65535 bytes", Frame{Type: TypeData, Stream: 3, Length: 65536}},
		{"SYN on stream 0", Frame{Type: TypeWindow, Flags: FlagSYN}},
		{"FIN on stream 0", Frame{Type: TypeWindow, Flags: FlagFIN}},
		{"ACK, since smux opens without an answer", Frame{Type: TypeWindow, Flags: FlagACK, Stream: 3}},
		{"SYN with ACK", Frame{Type: TypeWindow, Flags: FlagSYN | FlagACK, Stream: 3}},
		{"RST, since smux has no reset", Frame{Type: TypeWindow, Flags: FlagRST, Stream: 3}},
		{"FIN with RST", Frame{Type: TypeWindow, Flags: FlagFIN | FlagRST, Stream: 3}},
		{"SYN and FIN in one frame", Frame{Type: TypeWindow, Flags: FlagSYN | FlagFIN, Stream: 3}},
		{"ping, since NOP is never answered", Frame{Type: TypePing, Flags: FlagSYN, Value: 1}},
		{"ping reply", Frame{Type: TypePing, Flags: FlagACK, Value: 1}},
		{"go away", Frame{Type: TypeGoAway}},
		{"an unknown frame type", Frame{Type: Type(99), Stream: 3}},
	}
	v1 := []encodeError{
		{"a window update, since v1 has no windows", Frame{Type: TypeWindow, Stream: 3, Value: 5, Window: 65536}},
	}
	v2 := []encodeError{
		{"a window update on stream 0", Frame{Type: TypeWindow, Value: 5, Window: 65536}},
	}
	testAppendErrors(t, Smux(1), append(v1, both...))
	testAppendErrors(t, Smux(2), append(v2, both...))
}

// TestSmuxAppendFrameIgnoresFieldsTheCommandDoesNotCarry pins down the
// fields smux drops, which the engine may leave set.
func TestSmuxAppendFrameIgnoresFieldsTheCommandDoesNotCarry(t *testing.T) {
	cases := []struct {
		name  string
		frame Frame
		wire  string
	}{
		{"a window on SYN", Frame{Type: TypeWindow, Flags: FlagSYN, Stream: 3, Value: 7, Window: 9}, "02 00 0000 03000000"},
		{"a value on FIN", Frame{Type: TypeWindow, Flags: FlagFIN, Stream: 3, Value: 7}, "02 01 0000 03000000"},
		{"a stream on NOP", Frame{Type: TypeNop, Stream: 3, Length: 4}, "02 03 0000 00000000"},
		{"a window on data", Frame{Type: TypeData, Stream: 3, Length: 5, Value: 1, Window: 2}, "02 02 0500 03000000"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Smux(2).AppendFrame(nil, tc.frame)
			if err != nil || !bytes.Equal(got, hexWire(t, tc.wire)) {
				t.Fatalf("AppendFrame(%v) = % x, %v; want %s", tc.frame, got, err, tc.wire)
			}
		})
	}
}

// TestSmuxCodecDoesNotAllocatePerFrame holds the codec to the Codec
// contract: the read and write loops run per frame.
func TestSmuxCodecDoesNotAllocatePerFrame(t *testing.T) {
	for _, v := range []int{1, 2} {
		testNoAllocs(t, Smux(v), smuxGolden(v))
	}
}

// TestSmuxReturnsOneCodecPerVersionAndNilOtherwise checks that Smux hands
// out shared values the engine may compare, and nil rather than a panic
// for a bad version.
func TestSmuxReturnsOneCodecPerVersionAndNilOtherwise(t *testing.T) {
	for _, v := range []int{-1, 0, 3, 256} {
		if c := Smux(v); c != nil {
			t.Errorf("Smux(%d) = %v, want nil", v, c.Name())
		}
	}
	v1, v1again, v2, v2again := Smux(1), Smux(1), Smux(2), Smux(2)
	if v1 != v1again || v2 != v2again || v1 == v2 {
		t.Fatal("Smux must return one shared codec per version")
	}
	if v1.Name() != "smux1" || v2.Name() != "smux2" {
		t.Fatalf("names %q, %q; want smux1, smux2", v1.Name(), v2.Name())
	}
	if v1.Caps() != v1again.Caps() {
		t.Fatal("Caps must return the shared table, not a copy")
	}
}

// TestSmuxDescribesItself pins the Caps table, the only place the engine
// learns how smux behaves.
func TestSmuxDescribesItself(t *testing.T) {
	v1 := Caps{
		Window:        WindowNone,
		InitialWindow: 262144,
		MaxPayload:    65535,
		FirstID:       [2]uint32{3, 2},
		MaxStreamID:   math.MaxUint32,
		KeepAliveNop:  true,
	}
	v2 := v1
	v2.Window = WindowAbsolute
	if got := *Smux(1).Caps(); got != v1 {
		t.Errorf("smux1 caps = %+v, want %+v", got, v1)
	}
	if got := *Smux(2).Caps(); got != v2 {
		t.Errorf("smux2 caps = %+v, want %+v", got, v2)
	}
}
