package wire

import (
	"encoding/binary"
)

// muxado v2 wire constants, named after golang.ngrok.com/muxado/v2's
// frame/common.go so that readers can check them against it.
const (
	// muxadoHeaderLen is the size of every muxado header: a 24-bit
	// length, type and flags nibbles, and a 32-bit stream id.
	muxadoHeaderLen = 8
	// muxadoMaxLength is the largest value of the 24-bit length field.
	muxadoMaxLength = 0xFFFFFF
	// muxadoStreamMask keeps the 31 bits of a stream id (or GOAWAY last
	// stream id, or WNDINC increment); the top bit is reserved.
	muxadoStreamMask = 0x7FFFFFFF
	// muxadoRstLen and muxadoWndIncLen are the exact lengths of those
	// frames' bodies; muxadoGoAwayLen is the minimum length of a GOAWAY,
	// whose fixed part (last id, code) is followed by debug bytes.
	muxadoRstLen    = 4
	muxadoWndIncLen = 4
	muxadoGoAwayLen = 8
)

// muxado frame types (the high nibble of byte 3). Types 4..15 are
// undefined; muxado reads and ignores them, and so do we.
const (
	muxadoTypeRst    = 0x0
	muxadoTypeData   = 0x1
	muxadoTypeWndInc = 0x2
	muxadoTypeGoAway = 0x3
)

// muxado DATA flags (the low nibble of byte 3). No other type has flags.
const (
	muxadoFlagFIN = 0x1
	muxadoFlagSYN = 0x2
)

// muxadoCaps describes muxado v2. Its 256 KiB window is muxado's default
// MaxWindowSize, which is never advertised: both peers assume it, and the
// receiver resets a stream that overruns it with FlowControlError instead
// of killing the session. Client ids start at 3 and server ids at 2, and
// the top bit of an id is reserved. Opening is a SYN flag on DATA with no
// answer, and muxado mishandles SYN and FIN in one frame, hence
// SynFinApart. Data for a stream that is not open draws RST StreamClosed.
var muxadoCaps = Caps{
	Window:             WindowDelta,
	InitialWindow:      262144,
	MaxPayload:         muxadoMaxLength,
	FirstID:            [2]uint32{3, 2},
	MaxStreamID:        muxadoStreamMask,
	AckOpens:           false,
	Reset:              true,
	PingReply:          false,
	KeepAliveNop:       false,
	GoAway:             true,
	GoAwayLastID:       true,
	GoAwayKeepsStreams: true,
	ReasonCodes:        true,
	WindowOnOpen:       false,
	SynFinApart:        true,
	OverrunResets:      true,
	RejectUnknownData:  true,
}

// muxadoCodec has no state, so a zero-size value can be shared freely.
type muxadoCodec struct{}

// muxadoSingleton is what Muxado hands out, so that codecs compare equal
// and callers never pay for a conversion to Codec.
var muxadoSingleton Codec = muxadoCodec{}

// Muxado returns the codec for ngrok's muxado v2
// (golang.ngrok.com/muxado/v2, also inconshreveable/muxado master). The
// 2013 format of ngrok 1.x is different and not supported. Every call
// returns the same value.
func Muxado() Codec { return muxadoSingleton }

// Name identifies the protocol in logs and errors.
func (muxadoCodec) Name() string { return "muxado2" }

// Caps returns the shared capability table rather than a copy so that the
// engine can hold on to it without allocating.
func (muxadoCodec) Caps() *Caps { return &muxadoCaps }

// ReadFrame decodes one 8-byte header and any fixed body. It validates
// before consuming, so a protocol error leaves r untouched; a DATA
// payload is left in r for the caller. GOAWAY debug bytes and the bodies
// of unknown frame types are skipped with discard: they can be 16 MiB
// long and nothing in polymux uses them, so they are never buffered.
//
// Unlike muxado, which masks the reserved bit of stream ids only when
// writing, every id with the bit set is rejected: no muxado peer sends
// one, and accepting it would create ids polymux could not echo back.
func (muxadoCodec) ReadFrame(r Reader) (Frame, error) {
	h, err := peek(r, muxadoHeaderLen, true)
	if err != nil {
		return Frame{}, err
	}
	length := uint32(h[0])<<16 | uint32(h[1])<<8 | uint32(h[2])
	typ, flags := h[3]>>4, h[3]&0x0F
	stream := binary.BigEndian.Uint32(h[4:8])

	if stream > muxadoStreamMask {
		return Frame{}, protoErr("muxado2", "stream id %#x has the reserved bit set", stream)
	}
	switch typ {
	case muxadoTypeRst:
		if length != muxadoRstLen {
			return Frame{}, protoErr("muxado2", "reset with length %d", length)
		}
		if stream == 0 {
			return Frame{}, protoErr("muxado2", "reset on stream 0")
		}
		h, err = peek(r, muxadoHeaderLen+muxadoRstLen, false)
		if err != nil {
			return Frame{}, err
		}
		f := Frame{Type: TypeWindow, Flags: FlagRST, Stream: stream, Value: binary.BigEndian.Uint32(h[8:12])}
		// Cannot fail: peek has just proved the bytes are buffered.
		_, _ = r.Discard(muxadoHeaderLen + muxadoRstLen)
		return f, nil
	case muxadoTypeData:
		if stream == 0 {
			return Frame{}, protoErr("muxado2", "data on stream 0")
		}
		// Flag bits other than FIN and SYN are undefined; muxado ignores
		// them, and dropping them keeps the frame re-encodable.
		f := Frame{Type: TypeData, Stream: stream, Length: length}
		if flags&muxadoFlagFIN != 0 {
			f.Flags |= FlagFIN
		}
		if flags&muxadoFlagSYN != 0 {
			f.Flags |= FlagSYN
		}
		// Cannot fail: peek has just proved the bytes are buffered.
		_, _ = r.Discard(muxadoHeaderLen)
		return f, nil
	case muxadoTypeWndInc:
		if length != muxadoWndIncLen {
			return Frame{}, protoErr("muxado2", "window increment with length %d", length)
		}
		if stream == 0 {
			return Frame{}, protoErr("muxado2", "window increment on stream 0")
		}
		h, err = peek(r, muxadoHeaderLen+muxadoWndIncLen, false)
		if err != nil {
			return Frame{}, err
		}
		incr := binary.BigEndian.Uint32(h[8:12]) & muxadoStreamMask
		if incr == 0 {
			// muxado kills the session on a zero increment.
			return Frame{}, protoErr("muxado2", "zero window increment on stream %d", stream)
		}
		// Cannot fail: peek has just proved the bytes are buffered.
		_, _ = r.Discard(muxadoHeaderLen + muxadoWndIncLen)
		return Frame{Type: TypeWindow, Stream: stream, Value: incr}, nil
	case muxadoTypeGoAway:
		if stream != 0 {
			return Frame{}, protoErr("muxado2", "go away on stream %d", stream)
		}
		if length < muxadoGoAwayLen {
			return Frame{}, protoErr("muxado2", "go away with length %d", length)
		}
		h, err = peek(r, muxadoHeaderLen+muxadoGoAwayLen, false)
		if err != nil {
			return Frame{}, err
		}
		f := Frame{
			Type:   TypeGoAway,
			LastID: binary.BigEndian.Uint32(h[8:12]) & muxadoStreamMask,
			Value:  binary.BigEndian.Uint32(h[12:16]),
		}
		// Cannot fail: peek has just proved the bytes are buffered.
		_, _ = r.Discard(muxadoHeaderLen + muxadoGoAwayLen)
		if err := discard(r, int(length-muxadoGoAwayLen)); err != nil {
			return Frame{}, err
		}
		return f, nil
	}
	// Types 4..15: muxado reads the payload and ignores the frame, so a
	// future extension does not break old peers. Report it as a NOP, which
	// the engine already ignores.
	if err := discard(r, muxadoHeaderLen+int(length)); err != nil {
		return Frame{}, err
	}
	return Frame{Type: TypeNop}, nil
}

// AppendFrame encodes f's header and any fixed body (RST code, WNDINC
// increment, GOAWAY last id and code, without debug bytes). muxado opens
// and half-closes with flags on DATA, so a TypeWindow SYN or FIN becomes
// an empty DATA frame (and reads back as TypeData). Anything that would
// not survive the trip to the peer is refused: SYN and FIN together
// (muxado mishandles it), ids or increments with the reserved top bit,
// a zero increment (a protocol error at the peer), a window on SYN/FIN.
func (muxadoCodec) AppendFrame(dst []byte, f Frame) ([]byte, error) {
	switch f.Type {
	case TypeData:
		if !muxadoStreamOK(f.Stream) || f.Length > muxadoMaxLength {
			return dst, unsupported("muxado2", f)
		}
		var flags byte
		switch f.Flags {
		case 0:
		case FlagSYN:
			flags = muxadoFlagSYN
		case FlagFIN:
			flags = muxadoFlagFIN
		default:
			return dst, unsupported("muxado2", f)
		}
		return muxadoAppendHeader(dst, f.Length, muxadoTypeData, flags, f.Stream), nil
	case TypeWindow:
		if !muxadoStreamOK(f.Stream) {
			return dst, unsupported("muxado2", f)
		}
		switch {
		case f.Flags == FlagRST:
			dst = muxadoAppendHeader(dst, muxadoRstLen, muxadoTypeRst, 0, f.Stream)
			return binary.BigEndian.AppendUint32(dst, f.Value), nil
		case f.Flags == FlagSYN && f.Value == 0:
			return muxadoAppendHeader(dst, 0, muxadoTypeData, muxadoFlagSYN, f.Stream), nil
		case f.Flags == FlagFIN && f.Value == 0:
			return muxadoAppendHeader(dst, 0, muxadoTypeData, muxadoFlagFIN, f.Stream), nil
		case f.Flags == 0 && f.Value != 0 && f.Value <= muxadoStreamMask:
			dst = muxadoAppendHeader(dst, muxadoWndIncLen, muxadoTypeWndInc, 0, f.Stream)
			return binary.BigEndian.AppendUint32(dst, f.Value), nil
		}
		return dst, unsupported("muxado2", f)
	case TypeGoAway:
		// The decoder masks the reserved bit, so a LastID using it could
		// not be read back as sent.
		if f.LastID > muxadoStreamMask {
			return dst, unsupported("muxado2", f)
		}
		dst = muxadoAppendHeader(dst, muxadoGoAwayLen, muxadoTypeGoAway, 0, 0)
		dst = binary.BigEndian.AppendUint32(dst, f.LastID)
		return binary.BigEndian.AppendUint32(dst, f.Value), nil
	}
	// TypePing and TypeNop: muxado has no liveness frame on the wire; its
	// heartbeat is an application-level stream.
	return dst, unsupported("muxado2", f)
}

// muxadoStreamOK reports whether id can name a stream on the wire: not
// zero, which is the session, and without the reserved top bit.
func muxadoStreamOK(id uint32) bool {
	return id != 0 && id <= muxadoStreamMask
}

// muxadoAppendHeader appends one 8-byte big-endian muxado header.
func muxadoAppendHeader(dst []byte, length uint32, typ, flags byte, stream uint32) []byte {
	dst = append(dst, byte(length>>16), byte(length>>8), byte(length), typ<<4|flags)
	return binary.BigEndian.AppendUint32(dst, stream)
}
