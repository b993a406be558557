package wire

import (
	"encoding/binary"
	"math"
)

// yamux wire constants, named after hashicorp/yamux so that readers can
// check them against its spec.md and const.go.
const (
	// yamuxHeaderLen is the size of every yamux frame header; only Data
	// frames have a body after it.
	yamuxHeaderLen = 12
	// yamuxVersion is the only protocol version ever defined.
	yamuxVersion = 0
)

// yamux frame types. The header's Length field means something different
// for each: body length, window delta, ping opaque value, GoAway code.
const (
	yamuxTypeData         = 0
	yamuxTypeWindowUpdate = 1
	yamuxTypePing         = 2
	yamuxTypeGoAway       = 3
)

// yamux flag bits. Bits above yamuxFlagRST are undefined; the decoder
// ignores them, as both Go implementations do.
const (
	yamuxFlagSYN uint16 = 0x1
	yamuxFlagACK uint16 = 0x2
	yamuxFlagFIN uint16 = 0x4
	yamuxFlagRST uint16 = 0x8
)

// yamuxStreamFlags are the neutral flags a Data or WindowUpdate frame can
// carry; yamuxPingFlags those that mean something on a Ping. Anything else
// would be lost on the way through the wire, so the encoder refuses it.
const (
	yamuxStreamFlags = FlagSYN | FlagACK | FlagFIN | FlagRST
	yamuxPingFlags   = FlagSYN | FlagACK
)

// yamuxCaps is shared by every yamux codec value; the engine must treat it
// as read-only. The values follow hashicorp/yamux and libp2p/go-yamux:
// client ids are odd from 1, server ids even from 2, and ids stop below
// 2^32-2 because both libraries report exhaustion there.
var yamuxCaps = Caps{
	Window:            WindowDelta,
	InitialWindow:     262144,
	MaxPayload:        math.MaxUint32,
	FirstID:           [2]uint32{1, 2},
	MaxStreamID:       math.MaxUint32 - 2,
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

// yamuxCodec has no state, so a zero-size value can be shared freely.
type yamuxCodec struct{}

// yamuxSingleton is what Yamux hands out, so that codecs compare equal and
// callers never pay for a conversion to Codec.
var yamuxSingleton Codec = yamuxCodec{}

// Yamux returns the codec for yamux (hashicorp/yamux, libp2p/go-yamux,
// protocol id /yamux/1.0.0). Every call returns the same value.
func Yamux() Codec { return yamuxSingleton }

// Name identifies the protocol in logs and errors.
func (yamuxCodec) Name() string { return "yamux" }

// Caps returns the shared capability table rather than a copy so that the
// engine can hold on to it without allocating.
func (yamuxCodec) Caps() *Caps { return &yamuxCaps }

// ReadFrame decodes one 12-byte header. It consumes nothing when it
// returns an error, and it leaves a Data frame's body in r for the caller,
// who alone knows where the payload should go.
func (yamuxCodec) ReadFrame(r Reader) (Frame, error) {
	h, err := peek(r, yamuxHeaderLen, true)
	if err != nil {
		return Frame{}, err
	}
	version, typ := h[0], h[1]
	flags := binary.BigEndian.Uint16(h[2:4])
	stream := binary.BigEndian.Uint32(h[4:8])
	length := binary.BigEndian.Uint32(h[8:12])

	if version != yamuxVersion {
		return Frame{}, protoErr("yamux", "version %d", version)
	}
	var f Frame
	switch typ {
	case yamuxTypeData, yamuxTypeWindowUpdate:
		if stream == 0 {
			return Frame{}, protoErr("yamux", "type %d on stream 0", typ)
		}
		f.Flags = yamuxToNeutral(flags)
		f.Stream = stream
		if typ == yamuxTypeData {
			f.Type = TypeData
			f.Length = length
		} else {
			f.Type = TypeWindow
			f.Value = length
		}
	case yamuxTypePing:
		if stream != 0 {
			return Frame{}, protoErr("yamux", "ping on stream %d", stream)
		}
		// FIN and RST mean nothing on a ping; dropping them here keeps
		// every decoded frame re-encodable.
		f = Frame{Type: TypePing, Flags: yamuxToNeutral(flags) & yamuxPingFlags, Value: length}
	case yamuxTypeGoAway:
		if stream != 0 {
			return Frame{}, protoErr("yamux", "go away on stream %d", stream)
		}
		f = Frame{Type: TypeGoAway, Value: length}
	default:
		return Frame{}, protoErr("yamux", "type %d", typ)
	}
	// Cannot fail: peek has just proved the bytes are buffered.
	_, _ = r.Discard(yamuxHeaderLen)
	return f, nil
}

// AppendFrame encodes f's header. Fields the frame's type does not carry
// on the yamux wire (Length of a control frame, Window, LastID) are
// ignored, because the engine reads Caps to know they are dropped; flags
// the wire cannot carry for that type are an error, because losing a FIN
// or RST silently would corrupt the stream's state at the peer.
func (yamuxCodec) AppendFrame(dst []byte, f Frame) ([]byte, error) {
	var typ uint8
	var length uint32
	switch f.Type {
	case TypeData, TypeWindow:
		if f.Stream == 0 || f.Flags&^yamuxStreamFlags != 0 {
			return dst, unsupported("yamux", f)
		}
		typ, length = yamuxTypeData, f.Length
		if f.Type == TypeWindow {
			typ, length = yamuxTypeWindowUpdate, f.Value
		}
	case TypePing:
		if f.Stream != 0 || f.Flags&^yamuxPingFlags != 0 {
			return dst, unsupported("yamux", f)
		}
		typ, length = yamuxTypePing, f.Value
	case TypeGoAway:
		if f.Stream != 0 || f.Flags != 0 {
			return dst, unsupported("yamux", f)
		}
		typ, length = yamuxTypeGoAway, f.Value
	default:
		// TypeNop and anything newer: yamux keeps peers alive with pings.
		return dst, unsupported("yamux", f)
	}
	dst = append(dst, yamuxVersion, typ)
	dst = binary.BigEndian.AppendUint16(dst, neutralToYamux(f.Flags))
	dst = binary.BigEndian.AppendUint32(dst, f.Stream)
	dst = binary.BigEndian.AppendUint32(dst, length)
	return dst, nil
}

// yamuxToNeutral maps wire flag bits to neutral flags bit by bit, so that
// the code stays right even if the neutral values are ever renumbered.
func yamuxToNeutral(w uint16) Flags {
	var f Flags
	if w&yamuxFlagSYN != 0 {
		f |= FlagSYN
	}
	if w&yamuxFlagACK != 0 {
		f |= FlagACK
	}
	if w&yamuxFlagFIN != 0 {
		f |= FlagFIN
	}
	if w&yamuxFlagRST != 0 {
		f |= FlagRST
	}
	return f
}

// neutralToYamux is the inverse of yamuxToNeutral; callers have already
// rejected flags that have no yamux bit.
func neutralToYamux(f Flags) uint16 {
	var w uint16
	if f&FlagSYN != 0 {
		w |= yamuxFlagSYN
	}
	if f&FlagACK != 0 {
		w |= yamuxFlagACK
	}
	if f&FlagFIN != 0 {
		w |= yamuxFlagFIN
	}
	if f&FlagRST != 0 {
		w |= yamuxFlagRST
	}
	return w
}
