package wire

import (
	"errors"
	"fmt"
	"io"
	"testing"
)

// detectRule restates the detection rule of shared/protocols/README.md
// independently of Detect, by frame fields rather than raw byte tests, and
// returns the codec name it picks, or "".
func detectRule(b []byte) string {
	typ, flags := b[3]>>4, b[3]&0x0F
	muxadoOpen := typ == muxadoTypeData && flags&muxadoFlagSYN != 0
	muxadoGoAway := typ == muxadoTypeGoAway && flags == 0
	if muxadoOpen || muxadoGoAway {
		return "muxado2"
	}
	yamuxFlags := uint16(b[2])<<8 | uint16(b[3])
	if b[0] == yamuxVersion && b[1] <= yamuxTypeGoAway && yamuxFlags <= 0x0F {
		return "yamux"
	}
	smuxLength := uint16(b[2]) | uint16(b[3])<<8
	if (b[0] == 1 || b[0] == 2) && (b[1] == smuxCmdSYN || b[1] == smuxCmdNOP) && smuxLength == 0 {
		return fmt.Sprintf("smux%d", b[0])
	}
	return ""
}

// detectSeeds encodes, with each codec's own AppendFrame, every frame a
// client may send first, and maps each encoding to the codec that made it.
func detectSeeds(tb testing.TB) map[string]Codec {
	type opening struct {
		c Codec
		f Frame
	}
	openings := []opening{
		{Yamux(), Frame{Type: TypeWindow, Flags: FlagSYN, Stream: 1, Value: 262144}},
		{Yamux(), Frame{Type: TypeWindow, Flags: FlagSYN, Stream: 1}},
		{Yamux(), Frame{Type: TypeData, Flags: FlagSYN, Stream: 1, Length: 5}},
		{Yamux(), Frame{Type: TypePing, Flags: FlagSYN, Value: 7}},
		{Yamux(), Frame{Type: TypeGoAway}},
		{Smux(1), Frame{Type: TypeWindow, Flags: FlagSYN, Stream: 3}},
		{Smux(1), Frame{Type: TypeNop}},
		{Smux(2), Frame{Type: TypeWindow, Flags: FlagSYN, Stream: 3}},
		{Smux(2), Frame{Type: TypeNop}},
		{Muxado(), Frame{Type: TypeWindow, Flags: FlagSYN, Stream: 3}},
		{Muxado(), Frame{Type: TypeData, Flags: FlagSYN, Stream: 3}},
		{Muxado(), Frame{Type: TypeData, Flags: FlagSYN, Stream: 3, Length: 5}},
		{Muxado(), Frame{Type: TypeData, Flags: FlagSYN, Stream: 3, Length: 0xFFFF}},
		{Muxado(), Frame{Type: TypeData, Flags: FlagSYN, Stream: 3, Length: 0x10000}},
		{Muxado(), Frame{Type: TypeData, Flags: FlagSYN, Stream: 3, Length: 0xFFFFFF}},
		{Muxado(), Frame{Type: TypeGoAway}},
	}
	seeds := make(map[string]Codec, len(openings))
	for _, o := range openings {
		b, err := o.c.AppendFrame(nil, o.f)
		if err != nil {
			tb.Fatalf("%s cannot encode opening frame %v: %v", o.c.Name(), o.f, err)
		}
		seeds[string(b)] = o.c
	}
	return seeds
}

// FuzzDetect checks Detect against an independent statement of the rule on
// arbitrary bytes, and that every opening frame a codec itself encodes is
// detected as that codec.
func FuzzDetect(f *testing.F) {
	seeds := detectSeeds(f)
	for s := range seeds {
		f.Add([]byte(s))
	}
	for _, tc := range openingFrames {
		f.Add(hexWire(f, tc.first))
	}
	for _, b := range fuzzGarbage {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Detect(data)
		if len(data) < DetectLen {
			if c != nil || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("Detect(% x) = %v, %v; want io.ErrUnexpectedEOF", data, c, err)
			}
			return
		}
		want := detectRule(data)
		if want == "" {
			if c != nil || !errors.Is(err, ErrProtocol) {
				t.Fatalf("Detect(% x) = %v, %v; want ErrProtocol", data, c, err)
			}
		} else if err != nil || c == nil || c.Name() != want {
			t.Fatalf("Detect(% x) = %v, %v; want %s", data, c, err, want)
		}
		if maker, ok := seeds[string(data)]; ok && c != maker {
			t.Fatalf("Detect(% x) picked %v for a frame %s encoded", data, c, maker.Name())
		}
	})
}
