package wire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

// fuzzMaxFrames bounds the frames one fuzz input is decoded into, so that
// an input of many tiny frames cannot make one iteration slow.
const fuzzMaxFrames = 1000

// fuzzMaxInput is the longest input the ReadFrame targets decode. The
// codecs keep no state between frames, so a long input finds nothing that
// a short one cannot, while the engine minimises every new interesting
// input in time quadratic in its length and fuzzes nothing meanwhile: a
// 1 KiB input held a 45 s run in minimisation for 40 s. Longer inputs are
// ignored, so they never count as new coverage.
const fuzzMaxInput = 512

// fuzzGarbage are seeds that belong to no protocol, or break one.
var fuzzGarbage = [][]byte{
	nil,
	{0x00},
	make([]byte, 8),
	make([]byte, 64),
	bytes.Repeat([]byte{0xFF}, 24),
	[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
	{0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03},
}

// addGoldenSeeds adds every golden case with a small tail, each such case
// followed by the next one, and the garbage seeds to f's corpus. Pairs
// rather than one long concatenation keep seeds short: the engine
// minimises every new input derived from a seed in time quadratic in its
// length, and does not fuzz meanwhile.
func addGoldenSeeds(f *testing.F, tables ...[]goldenFrame) {
	var inputs [][]byte
	for _, cases := range tables {
		for _, g := range cases {
			if len(g.tail) > 1024 {
				// The header alone still exercises the length.
				f.Add(hexWire(f, g.wire))
				continue
			}
			inputs = append(inputs, g.input(f))
		}
	}
	for i, in := range inputs {
		f.Add(in)
		f.Add(append(append([]byte(nil), in...), inputs[(i+1)%len(inputs)]...))
	}
	for _, b := range fuzzGarbage {
		f.Add(b)
	}
}

// checkReadLoop decodes data with c until an error, as a session's read
// loop would, and checks the Codec contract on whatever it finds: only the
// documented errors, DATA within Caps.MaxPayload, and every decoded frame
// (except NOP, which unknown muxado frames also become) re-encodable into
// bytes that decode to the same frame and nothing more. Inputs longer
// than fuzzMaxInput are skipped.
func checkReadLoop(t *testing.T, c Codec, data []byte) {
	if len(data) > fuzzMaxInput {
		return
	}
	r := bufio.NewReaderSize(bytes.NewReader(data), MinReadBuffer)
	caps := c.Caps()
	buf := make([]byte, 0, MaxEncodedLen)
	for range fuzzMaxFrames {
		f, err := c.ReadFrame(r)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrProtocol) {
				t.Fatalf("ReadFrame: unexpected error %v", err)
			}
			if f != (Frame{}) {
				t.Fatalf("ReadFrame returned frame %v with error %v", f, err)
			}
			return
		}
		if f.Type == TypeData {
			if f.Length > caps.MaxPayload {
				t.Fatalf("data frame %v exceeds MaxPayload %d", f, caps.MaxPayload)
			}
			if _, err := r.Discard(int(f.Length)); err != nil {
				return // the payload is cut short: the end of the input
			}
		}
		if f.Type == TypeNop {
			continue
		}
		enc, err := c.AppendFrame(buf[:0], f)
		if err != nil {
			// The one frame a codec may read but not write: SYN and FIN
			// together, which peers accept but mishandle.
			if caps.SynFinApart && f.Flags&(FlagSYN|FlagFIN) == FlagSYN|FlagFIN && errors.Is(err, ErrUnsupported) {
				continue
			}
			t.Fatalf("decoded frame %v cannot be encoded: %v", f, err)
		}
		if len(enc) > MaxEncodedLen {
			t.Fatalf("encoding of %v is %d bytes, more than MaxEncodedLen", f, len(enc))
		}
		rr := bufio.NewReaderSize(bytes.NewReader(enc), MinReadBuffer)
		g, err := c.ReadFrame(rr)
		if err != nil || g != f {
			t.Fatalf("round trip of %v through % x gave %v, %v", f, enc, g, err)
		}
		if _, err := c.ReadFrame(rr); err != io.EOF {
			t.Fatalf("re-encoding of %v (% x) has bytes after the frame: %v", f, enc, err)
		}
	}
}

// FuzzSmux1ReadFrame feeds arbitrary bytes to the smux v1 decoder, as a
// hostile peer could; see checkReadLoop for what must hold.
func FuzzSmux1ReadFrame(f *testing.F) {
	addGoldenSeeds(f, smuxGolden(1), smuxGolden(2))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkReadLoop(t, Smux(1), data)
	})
}

// FuzzSmux2ReadFrame is FuzzSmux1ReadFrame for smux v2, whose UPD frame
// has a fixed body.
func FuzzSmux2ReadFrame(f *testing.F) {
	addGoldenSeeds(f, smuxGolden(2), smuxGolden(1))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkReadLoop(t, Smux(2), data)
	})
}
