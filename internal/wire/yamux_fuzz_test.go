package wire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzYamuxReadFrame feeds arbitrary bytes to the decoder. It must never
// panic, fail only in the documented ways, and every frame it accepts must
// survive re-encoding: the bytes come back as read, minus the flag bits
// the frame's type gives no meaning.
func FuzzYamuxReadFrame(f *testing.F) {
	var all []byte
	for _, g := range yamuxGoldenCases() {
		f.Add(g.wire)
		all = append(all, g.wire...)
	}
	f.Add(all)
	f.Add(append(yamuxHex("00 00 0000 00000003 00000005"), "hello"...))
	f.Add(append(append(yamuxHex("00 00 0000 00000003 00000005"), "hello"...),
		yamuxHex("00 02 0001 00000000 00000007 00 03 0000 00000000 00000002")...))
	f.Add(yamuxHex("00 00 0000 00000003 00000010 6869")) // payload cut short
	f.Add([]byte{})
	f.Add([]byte{0})
	f.Add(yamuxHex("00 01 0001 000000"))
	f.Add(yamuxHex("01 00 0000 00000001 00000000"))
	f.Add(yamuxHex("00 04 0000 00000000 00000000"))
	f.Add(yamuxHex("00 02 ffff 00000001 ffffffff"))
	f.Add(yamuxHex("00 00 ffff 00000000 ffffffff"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))

	c := Yamux()
	f.Fuzz(func(t *testing.T, data []byte) {
		src := bytes.NewReader(data)
		r := bufio.NewReaderSize(src, MinReadBuffer)
		for i := 0; i <= len(data); i++ {
			var hdr [yamuxHeaderLen]byte
			peeked, _ := r.Peek(yamuxHeaderLen)
			copy(hdr[:], peeked)

			fr, err := c.ReadFrame(r)
			if err != nil {
				if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.Is(err, ErrProtocol) {
					t.Fatalf("ReadFrame: unexpected error %v", err)
				}
				return
			}

			enc, err := c.AppendFrame(nil, fr)
			if err != nil {
				t.Fatalf("AppendFrame(%v) of a decoded frame: %v", fr, err)
			}
			want := hdr
			switch fr.Type {
			case TypeData, TypeWindow:
				want[2], want[3] = 0, hdr[3]&0x0f
			case TypePing:
				want[2], want[3] = 0, hdr[3]&0x03
			case TypeGoAway:
				want[2], want[3] = 0, 0
			default:
				t.Fatalf("ReadFrame returned a frame of type %v", fr.Type)
			}
			if !bytes.Equal(enc, want[:]) {
				t.Fatalf("re-encoding %v gave % x, want % x (read % x)", fr, enc, want[:], hdr[:])
			}
			back, err := c.ReadFrame(yamuxReader(enc))
			if err != nil || back != fr {
				t.Fatalf("round trip of %v gave %v, %v", fr, back, err)
			}

			if fr.Type == TypeData {
				remaining := src.Len() + r.Buffered()
				n := min(int64(fr.Length), int64(remaining))
				if d, err := r.Discard(int(n)); err != nil || int64(d) != n {
					t.Fatalf("Discard(%d) of %d remaining bytes = %d, %v", n, remaining, d, err)
				}
			}
		}
		t.Fatalf("ReadFrame returned more frames than a %d-byte input can hold", len(data))
	})
}

// FuzzYamuxAppendFrame feeds arbitrary frames to the encoder. It checks the
// encoder against an independent statement of what yamux can express, and
// that every accepted frame decodes back to its wire-carried fields.
func FuzzYamuxAppendFrame(f *testing.F) {
	for _, g := range yamuxGoldenCases() {
		fr := g.frame
		f.Add(uint8(fr.Type), uint8(fr.Flags), fr.Stream, fr.Length, fr.Value)
	}
	f.Add(uint8(TypeNop), uint8(0), uint32(0), uint32(0), uint32(0))
	f.Add(uint8(TypeData), uint8(0), uint32(0), uint32(5), uint32(0))
	f.Add(uint8(TypePing), uint8(FlagSYN), uint32(1), uint32(0), uint32(7))
	f.Add(uint8(TypePing), uint8(FlagFIN), uint32(0), uint32(0), uint32(7))
	f.Add(uint8(TypeGoAway), uint8(FlagRST), uint32(0), uint32(0), uint32(1))
	f.Add(uint8(TypeWindow), uint8(0xf0), uint32(1), uint32(0), uint32(1))
	f.Add(uint8(255), uint8(255), uint32(1<<32-1), uint32(1<<32-1), uint32(1<<32-1))

	c := Yamux()
	f.Fuzz(func(t *testing.T, typ, flags uint8, stream, length, value uint32) {
		// All eight flag bits are used, not only the four defined ones, so
		// that refusing undefined neutral flags is exercised too. Window
		// and LastID are filled to check that they are ignored.
		in := Frame{
			Type:   Type(typ % 6),
			Flags:  Flags(flags),
			Stream: stream,
			Length: length,
			Value:  value,
			Window: length ^ value,
			LastID: stream ^ value,
		}

		// want is the frame as decoding rebuilds it: only the fields the
		// yamux header carries for that type. ok says whether yamux can
		// express in at all.
		var want Frame
		var ok bool
		switch in.Type {
		case TypeData:
			want = Frame{Type: TypeData, Flags: in.Flags, Stream: in.Stream, Length: in.Length}
			ok = in.Stream != 0 && in.Flags <= 0xf
		case TypeWindow:
			want = Frame{Type: TypeWindow, Flags: in.Flags, Stream: in.Stream, Value: in.Value}
			ok = in.Stream != 0 && in.Flags <= 0xf
		case TypePing:
			want = Frame{Type: TypePing, Flags: in.Flags, Value: in.Value}
			ok = in.Stream == 0 && in.Flags&^(FlagSYN|FlagACK) == 0
		case TypeGoAway:
			want = Frame{Type: TypeGoAway, Value: in.Value}
			ok = in.Stream == 0 && in.Flags == 0
		}

		prefix := []byte("pre")
		out, err := c.AppendFrame(prefix, in)
		if !ok {
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("AppendFrame(%v) = % x, %v; want an error wrapping ErrUnsupported", in, out, err)
			}
			if string(out) != "pre" {
				t.Fatalf("AppendFrame(%v) changed dst to % x on error", in, out)
			}
			return
		}
		if err != nil {
			t.Fatalf("AppendFrame(%v): %v", in, err)
		}
		if len(out) != len(prefix)+yamuxHeaderLen || string(out[:3]) != "pre" {
			t.Fatalf("AppendFrame(%v) = % x, want the prefix and 12 bytes", in, out)
		}
		got, err := c.ReadFrame(yamuxReader(out[3:]))
		if err != nil {
			t.Fatalf("ReadFrame(% x) of AppendFrame(%v): %v", out[3:], in, err)
		}
		if got != want {
			t.Fatalf("AppendFrame(%v) then ReadFrame = %v, want %v", in, got, want)
		}
	})
}
