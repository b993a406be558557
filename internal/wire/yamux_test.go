package wire

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// yamuxGolden is one frame together with its exact yamux encoding.
type yamuxGolden struct {
	name  string
	frame Frame
	wire  []byte
}

// yamuxHex decodes hex with any spaces in it, so that literals can be
// grouped by header field as in the spec.
func yamuxHex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

// yamuxFlagNames spells a neutral flag set for test names.
func yamuxFlagNames(f Flags) string {
	if f == 0 {
		return "no flag"
	}
	var names []string
	for _, n := range []struct {
		bit  Flags
		name string
	}{{FlagSYN, "SYN"}, {FlagACK, "ACK"}, {FlagFIN, "FIN"}, {FlagRST, "RST"}} {
		if f&n.bit != 0 {
			names = append(names, n.name)
		}
	}
	return strings.Join(names, "|")
}

// yamuxGoldenCases lists every frame kind: hand-written literals from the
// spec, then every flag combination of Data and WindowUpdate with the
// header computed field by field, then pings and GoAway codes. The fuzz
// targets use the same list as seeds.
func yamuxGoldenCases() []yamuxGolden {
	cases := []yamuxGolden{
		{
			name:  "a window update with SYN opens stream 1 without extra credit",
			frame: Frame{Type: TypeWindow, Flags: FlagSYN, Stream: 1, Value: 0},
			wire:  yamuxHex("00 01 0001 00000001 00000000"),
		},
		{
			name:  "a data frame announces 5 bytes on stream 3",
			frame: Frame{Type: TypeData, Stream: 3, Length: 5},
			wire:  yamuxHex("00 00 0000 00000003 00000005"),
		},
		{
			name:  "a ping request carries opaque value 7",
			frame: Frame{Type: TypePing, Flags: FlagSYN, Value: 7},
			wire:  yamuxHex("00 02 0001 00000000 00000007"),
		},
		{
			name:  "a go away reports a protocol error",
			frame: Frame{Type: TypeGoAway, Value: 1},
			wire:  yamuxHex("00 03 0000 00000000 00000001"),
		},
		{
			name:  "a window update with ACK accepts stream 2 and grants 16 MiB minus 256 KiB",
			frame: Frame{Type: TypeWindow, Flags: FlagACK, Stream: 2, Value: 16<<20 - 256<<10},
			wire:  yamuxHex("00 01 0002 00000002 00fc0000"),
		},
		{
			name:  "a window update with RST carries a go-yamux error code",
			frame: Frame{Type: TypeWindow, Flags: FlagRST, Stream: 4294967293, Value: 0xdeadbeef},
			wire:  yamuxHex("00 01 0008 fffffffd deadbeef"),
		},
		{
			name:  "a data frame may announce the largest length the wire holds",
			frame: Frame{Type: TypeData, Flags: FlagFIN, Stream: 0xffffffff, Length: 0xffffffff},
			wire:  yamuxHex("00 00 0004 ffffffff ffffffff"),
		},
	}
	for fl := Flags(0); fl < 16; fl++ {
		cases = append(cases,
			yamuxGolden{
				name:  fmt.Sprintf("a data frame with %s keeps its flags", yamuxFlagNames(fl)),
				frame: Frame{Type: TypeData, Flags: fl, Stream: 0x01020304, Length: 0x0a0b0c0d},
				wire:  []byte{0, 0, 0, byte(fl), 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d},
			},
			yamuxGolden{
				name:  fmt.Sprintf("a window update with %s keeps its flags", yamuxFlagNames(fl)),
				frame: Frame{Type: TypeWindow, Flags: fl, Stream: 0x11121314, Value: 0x1a1b1c1d},
				wire:  []byte{0, 1, 0, byte(fl), 0x11, 0x12, 0x13, 0x14, 0x1a, 0x1b, 0x1c, 0x1d},
			},
		)
	}
	for _, p := range []struct {
		flags Flags
		value uint32
	}{{FlagSYN, 0}, {FlagSYN, 0xcafebabe}, {FlagACK, 0}, {FlagACK, 0xcafebabe}} {
		cases = append(cases, yamuxGolden{
			name:  fmt.Sprintf("a ping with %s echoes opaque value %#x", yamuxFlagNames(p.flags), p.value),
			frame: Frame{Type: TypePing, Flags: p.flags, Value: p.value},
			wire: []byte{0, 2, 0, byte(p.flags), 0, 0, 0, 0,
				byte(p.value >> 24), byte(p.value >> 16), byte(p.value >> 8), byte(p.value)},
		})
	}
	for code := uint32(0); code <= 2; code++ {
		cases = append(cases, yamuxGolden{
			name:  fmt.Sprintf("a go away carries code %d", code),
			frame: Frame{Type: TypeGoAway, Value: code},
			wire:  []byte{0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(code)},
		})
	}
	return cases
}

// yamuxReader wraps b in the smallest reader every codec must work with.
func yamuxReader(b []byte) *bufio.Reader {
	return bufio.NewReaderSize(bytes.NewReader(b), MinReadBuffer)
}

func TestYamuxGoldenFramesEncodeAndDecodeExactly(t *testing.T) {
	c := Yamux()
	for _, tc := range yamuxGoldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.AppendFrame(nil, tc.frame)
			if err != nil {
				t.Fatalf("AppendFrame(%v): %v", tc.frame, err)
			}
			if !bytes.Equal(got, tc.wire) {
				t.Fatalf("AppendFrame(%v) = % x, want % x", tc.frame, got, tc.wire)
			}
			r := yamuxReader(tc.wire)
			f, err := c.ReadFrame(r)
			if err != nil {
				t.Fatalf("ReadFrame(% x): %v", tc.wire, err)
			}
			if f != tc.frame {
				t.Fatalf("ReadFrame(% x) = %v, want %v", tc.wire, f, tc.frame)
			}
			if _, err := c.ReadFrame(r); err != io.EOF {
				t.Fatalf("ReadFrame after the only frame: err = %v, want io.EOF", err)
			}
		})
	}
}

func TestYamuxAppendFrameAppendsAfterExistingBytes(t *testing.T) {
	dst := []byte("prefix")
	got, err := Yamux().AppendFrame(dst, Frame{Type: TypeGoAway, Value: 2})
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte("prefix"), yamuxHex("00 03 0000 00000000 00000002")...)
	if !bytes.Equal(got, want) {
		t.Fatalf("got % x, want % x", got, want)
	}
}

func TestYamuxAppendFrameIgnoresFieldsTheTypeDoesNotCarry(t *testing.T) {
	tests := []struct {
		name  string
		frame Frame
		wire  []byte
	}{
		{
			name:  "a data frame drops Value, Window and LastID",
			frame: Frame{Type: TypeData, Stream: 3, Length: 5, Value: 9, Window: 9, LastID: 9},
			wire:  yamuxHex("00 00 0000 00000003 00000005"),
		},
		{
			name:  "a window update sends Value, not Length",
			frame: Frame{Type: TypeWindow, Stream: 3, Length: 9, Value: 5, Window: 9, LastID: 9},
			wire:  yamuxHex("00 01 0000 00000003 00000005"),
		},
		{
			name:  "a ping drops Length, Window and LastID",
			frame: Frame{Type: TypePing, Flags: FlagACK, Length: 9, Value: 5, Window: 9, LastID: 9},
			wire:  yamuxHex("00 02 0002 00000000 00000005"),
		},
		{
			name:  "a go away drops LastID because yamux has no field for it",
			frame: Frame{Type: TypeGoAway, Length: 9, Value: 2, Window: 9, LastID: 9},
			wire:  yamuxHex("00 03 0000 00000000 00000002"),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Yamux().AppendFrame(nil, tc.frame)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.wire) {
				t.Fatalf("got % x, want % x", got, tc.wire)
			}
		})
	}
}

func TestYamuxReadFrameIgnoresBitsWithoutMeaning(t *testing.T) {
	tests := []struct {
		name string
		wire []byte
		want Frame
	}{
		{
			name: "a data frame drops undefined flag bits",
			wire: yamuxHex("00 00 fff1 00000003 00000000"),
			want: Frame{Type: TypeData, Flags: FlagSYN, Stream: 3},
		},
		{
			name: "a window update drops undefined flag bits",
			wire: yamuxHex("00 01 801c 00000003 00000000"),
			want: Frame{Type: TypeWindow, Flags: FlagFIN | FlagRST, Stream: 3},
		},
		{
			name: "a ping drops FIN, RST and undefined bits",
			wire: yamuxHex("00 02 ff0e 00000000 00000001"),
			want: Frame{Type: TypePing, Flags: FlagACK, Value: 1},
		},
		{
			name: "a go away drops every flag",
			wire: yamuxHex("00 03 ffff 00000000 00000000"),
			want: Frame{Type: TypeGoAway},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Yamux().ReadFrame(yamuxReader(tc.wire))
			if err != nil {
				t.Fatal(err)
			}
			if f != tc.want {
				t.Fatalf("got %v, want %v", f, tc.want)
			}
		})
	}
}

func TestYamuxReadFrameRejectsProtocolViolations(t *testing.T) {
	tests := []struct {
		name string
		wire []byte
	}{
		{"version 1 is unknown", yamuxHex("01 00 0000 00000001 00000000")},
		{"version 255 is unknown", yamuxHex("ff 01 0000 00000001 00000000")},
		{"type 4 is unknown", yamuxHex("00 04 0000 00000000 00000000")},
		{"type 255 is unknown", yamuxHex("00 ff 0000 00000000 00000000")},
		{"data on stream 0 has no stream", yamuxHex("00 00 0000 00000000 00000005")},
		{"a window update on stream 0 has no stream", yamuxHex("00 01 0001 00000000 00000000")},
		{"a ping on stream 5 is not a session frame", yamuxHex("00 02 0001 00000005 00000007")},
		{"a go away on stream 2 is not a session frame", yamuxHex("00 03 0000 00000002 00000000")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := yamuxReader(tc.wire)
			f, err := Yamux().ReadFrame(r)
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("ReadFrame(% x) = %v, %v; want an error wrapping ErrProtocol", tc.wire, f, err)
			}
			if f != (Frame{}) {
				t.Errorf("frame on error = %v, want the zero frame", f)
			}
			if r.Buffered() != yamuxHeaderLen {
				t.Errorf("after the error %d bytes are buffered, want the whole header (%d) left unread",
					r.Buffered(), yamuxHeaderLen)
			}
		})
	}
}

func TestYamuxReadFrameReportsWhereTheInputEnds(t *testing.T) {
	t.Run("empty input ends cleanly", func(t *testing.T) {
		if _, err := Yamux().ReadFrame(yamuxReader(nil)); err != io.EOF {
			t.Fatalf("err = %v, want io.EOF", err)
		}
	})
	whole := yamuxHex("00 01 0001 00000001 00000000")
	for n := 1; n < yamuxHeaderLen; n++ {
		t.Run(fmt.Sprintf("a header cut after %d bytes ends unexpectedly", n), func(t *testing.T) {
			if _, err := Yamux().ReadFrame(yamuxReader(whole[:n])); err != io.ErrUnexpectedEOF {
				t.Fatalf("err = %v, want io.ErrUnexpectedEOF", err)
			}
		})
	}
	t.Run("a header cut after a whole frame ends unexpectedly", func(t *testing.T) {
		r := yamuxReader(append(append([]byte{}, whole...), whole[:5]...))
		if _, err := Yamux().ReadFrame(r); err != nil {
			t.Fatal(err)
		}
		if _, err := Yamux().ReadFrame(r); err != io.ErrUnexpectedEOF {
			t.Fatalf("err = %v, want io.ErrUnexpectedEOF", err)
		}
	})
}

func TestYamuxReadFrameLeavesDataPayloadForTheCaller(t *testing.T) {
	var in []byte
	in = append(in, yamuxHex("00 00 0000 00000003 00000005")...)
	in = append(in, "hello"...)
	in = append(in, yamuxHex("00 00 0004 00000005 00000003")...)
	in = append(in, "bye"...)
	in = append(in, yamuxHex("00 02 0002 00000000 00000009")...)
	r := yamuxReader(in)
	c := Yamux()

	for _, want := range []struct {
		frame   Frame
		payload string
	}{
		{Frame{Type: TypeData, Stream: 3, Length: 5}, "hello"},
		{Frame{Type: TypeData, Flags: FlagFIN, Stream: 5, Length: 3}, "bye"},
		{Frame{Type: TypePing, Flags: FlagACK, Value: 9}, ""},
	} {
		f, err := c.ReadFrame(r)
		if err != nil {
			t.Fatalf("ReadFrame, want %v: %v", want.frame, err)
		}
		if f != want.frame {
			t.Fatalf("ReadFrame = %v, want %v", f, want.frame)
		}
		p := make([]byte, f.Length)
		if _, err := io.ReadFull(r, p); err != nil {
			t.Fatalf("reading the %d payload bytes: %v", f.Length, err)
		}
		if string(p) != want.payload {
			t.Fatalf("payload = %q, want %q", p, want.payload)
		}
	}
	if _, err := c.ReadFrame(r); err != io.EOF {
		t.Fatalf("ReadFrame at the end: err = %v, want io.EOF", err)
	}
}

func TestYamuxAppendFrameRefusesWhatYamuxCannotExpress(t *testing.T) {
	tests := []struct {
		name  string
		frame Frame
	}{
		{"a nop has no yamux frame", Frame{Type: TypeNop}},
		{"an unknown type has no yamux frame", Frame{Type: Type(5)}},
		{"type 255 has no yamux frame", Frame{Type: Type(255)}},
		{"data on stream 0 has no stream", Frame{Type: TypeData, Length: 5}},
		{"a window update on stream 0 has no stream", Frame{Type: TypeWindow, Flags: FlagSYN}},
		{"a ping on stream 1 is not a session frame", Frame{Type: TypePing, Flags: FlagSYN, Stream: 1}},
		{"a go away on stream 2 is not a session frame", Frame{Type: TypeGoAway, Stream: 2}},
		{"a ping with FIN would lose the FIN", Frame{Type: TypePing, Flags: FlagSYN | FlagFIN}},
		{"a ping with RST would lose the RST", Frame{Type: TypePing, Flags: FlagRST}},
		{"a go away with SYN would lose the SYN", Frame{Type: TypeGoAway, Flags: FlagSYN}},
		{"data with an undefined neutral flag would lose it", Frame{Type: TypeData, Flags: 0x10, Stream: 1}},
		{"a window update with an undefined neutral flag would lose it", Frame{Type: TypeWindow, Flags: 0x80, Stream: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			backing := []byte("prefix\xee\xee\xee\xee\xee\xee\xee\xee\xee\xee\xee\xee\xee\xee")
			dst := backing[:6]
			got, err := Yamux().AppendFrame(dst, tc.frame)
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("AppendFrame(%v) error = %v, want one wrapping ErrUnsupported", tc.frame, err)
			}
			if string(got) != "prefix" || &got[0] != &dst[0] {
				t.Errorf("AppendFrame returned % x, want dst unchanged", got)
			}
			if want := "prefix" + strings.Repeat("\xee", 14); string(backing) != want {
				t.Errorf("spare capacity of dst was written: % x", backing)
			}
		})
	}
}

// yamuxRepeatReader yields b over and over, so that a bufio.Reader over it
// never runs dry and never reports an error.
type yamuxRepeatReader struct {
	b   []byte
	off int
}

// Read fills p with the next bytes of the endless repetition of b.
func (r *yamuxRepeatReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.b[r.off:])
		n += c
		r.off = (r.off + c) % len(r.b)
	}
	return n, nil
}

func TestYamuxCodecDoesNotAllocatePerFrame(t *testing.T) {
	c := Yamux()
	t.Run("AppendFrame into spare capacity does not allocate", func(t *testing.T) {
		buf := make([]byte, 0, 4*MaxEncodedLen)
		frames := []Frame{
			{Type: TypeData, Flags: FlagSYN, Stream: 1, Length: 100},
			{Type: TypeWindow, Flags: FlagACK, Stream: 2, Value: 1 << 20},
			{Type: TypePing, Flags: FlagSYN, Value: 7},
			{Type: TypeGoAway, Value: 1},
		}
		allocs := testing.AllocsPerRun(1000, func() {
			dst := buf[:0]
			for _, f := range frames {
				var err error
				if dst, err = c.AppendFrame(dst, f); err != nil {
					t.Fatal(err)
				}
			}
		})
		if allocs != 0 {
			t.Fatalf("AppendFrame allocated %v times per run, want 0", allocs)
		}
	})
	t.Run("ReadFrame over an endless stream does not allocate", func(t *testing.T) {
		var src []byte
		for _, f := range []Frame{
			{Type: TypeData, Stream: 1, Length: 0},
			{Type: TypeWindow, Flags: FlagACK, Stream: 2, Value: 1 << 20},
			{Type: TypePing, Flags: FlagSYN, Value: 7},
			{Type: TypeGoAway, Value: 1},
		} {
			src, _ = c.AppendFrame(src, f)
		}
		r := bufio.NewReaderSize(&yamuxRepeatReader{b: src}, MinReadBuffer)
		allocs := testing.AllocsPerRun(1000, func() {
			if _, err := c.ReadFrame(r); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Fatalf("ReadFrame allocated %v times per frame, want 0", allocs)
		}
	})
}

func TestYamuxDescribesItself(t *testing.T) {
	c := Yamux()
	if c.Name() != "yamux" {
		t.Errorf("Name() = %q, want %q", c.Name(), "yamux")
	}
	if Yamux() != c || c.Caps() != Yamux().Caps() {
		t.Errorf("Yamux() is not a singleton sharing one Caps")
	}
	want := Caps{
		Window:            WindowDelta,
		InitialWindow:     262144,
		MaxPayload:        1<<32 - 1,
		FirstID:           [2]uint32{1, 2},
		MaxStreamID:       4294967293,
		AckOpens:          true,
		Reset:             true,
		PingReply:         true,
		KeepAliveNop:      false,
		GoAway:            true,
		GoAwayLastID:      false,
		WindowOnOpen:      true,
		SynFinApart:       false,
		OverrunResets:     false,
		RejectUnknownData: false,
	}
	if got := *c.Caps(); got != want {
		t.Errorf("Caps() = %+v\nwant     %+v", got, want)
	}
}
