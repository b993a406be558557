package wire

import (
	"encoding/binary"
	"math"
)

// smux wire constants, named after xtaci/smux's frame.go so that readers
// can check them against the reference implementation.
const (
	// smuxHeaderLen is the size of every smux header: version, cmd,
	// length (uint16) and stream id (uint32).
	smuxHeaderLen = 8
	// smuxUpdLen is the fixed body of a v2 UPD frame: consumed and window,
	// both uint32.
	smuxUpdLen = 8
	// smuxMaxPayload is the largest Length a uint16 can carry.
	smuxMaxPayload = math.MaxUint16
)

// smux commands (byte 1 of the header). UPD exists only in version 2.
const (
	smuxCmdSYN = 0
	smuxCmdFIN = 1
	smuxCmdPSH = 2
	smuxCmdNOP = 3
	smuxCmdUPD = 4
)

// smux1Caps describes smux version 1, which has no per-stream window: the
// only receive-side limit is the peer's session buffer. xtaci/smux starts
// the client's counter at 1 and the server's at 0 and pre-increments by 2,
// so the first ids are 3 and 2. smux has no ACK, RST, ping reply or
// GoAway, and its peers close a session after 30 s without inbound
// traffic, hence KeepAliveNop.
var smux1Caps = Caps{
	Window:            WindowNone,
	InitialWindow:     262144,
	MaxPayload:        smuxMaxPayload,
	FirstID:           [2]uint32{3, 2},
	MaxStreamID:       math.MaxUint32,
	AckOpens:          false,
	Reset:             false,
	PingReply:         false,
	KeepAliveNop:      true,
	GoAway:            false,
	GoAwayLastID:      false,
	WindowOnOpen:      false,
	SynFinApart:       false,
	OverrunResets:     false,
	RejectUnknownData: false,
}

// smux2Caps is smux1Caps with version 2's absolute UPD(consumed, window)
// flow control. The 256 KiB initial window is smux's initialPeerWindow,
// the guess a v2 sender makes before the first UPD arrives.
var smux2Caps = func() Caps {
	c := smux1Caps
	c.Window = WindowAbsolute
	return c
}()

// smuxCodec is one smux version. It is used only through the pointers in
// smux1Singleton and smux2Singleton, so putting it in a Codec never
// allocates and codecs of the same version compare equal.
type smuxCodec struct {
	version byte
	name    string
	caps    *Caps
}

// The two smux codecs. smux has no version negotiation (every frame
// carries the version byte and a mismatch is a protocol error), so each
// version is a distinct codec.
var (
	smux1Singleton Codec = &smuxCodec{version: 1, name: "smux1", caps: &smux1Caps}
	smux2Singleton Codec = &smuxCodec{version: 2, name: "smux2", caps: &smux2Caps}
)

// Smux returns the codec for xtaci/smux protocol version 1 or 2, or nil
// for any other version: the version comes from configuration or from
// Detect, and a nil result is easier for the caller to turn into a
// configuration error than a panic would be. Every call with the same
// version returns the same value.
func Smux(version int) Codec {
	switch version {
	case 1:
		return smux1Singleton
	case 2:
		return smux2Singleton
	}
	return nil
}

// Name identifies the protocol and version in logs and errors.
func (c *smuxCodec) Name() string { return c.name }

// Caps returns the shared capability table rather than a copy so that the
// engine can hold on to it without allocating.
func (c *smuxCodec) Caps() *Caps { return c.caps }

// ReadFrame decodes one 8-byte header, and for UPD its 8-byte body. It
// peeks everything it validates before consuming anything, so an error
// leaves r untouched, and it leaves a PSH payload in r for the caller.
//
// The Length checks on SYN, FIN, NOP and UPD are those smux 1.5.56 makes:
// older peers never consume a payload on those commands, so a frame that
// carries one could only desynchronise the stream.
func (c *smuxCodec) ReadFrame(r Reader) (Frame, error) {
	h, err := peek(r, smuxHeaderLen, true)
	if err != nil {
		return Frame{}, err
	}
	version, cmd := h[0], h[1]
	length := binary.LittleEndian.Uint16(h[2:4])
	stream := binary.LittleEndian.Uint32(h[4:8])

	if version != c.version {
		return Frame{}, protoErr(c.name, "version %d", version)
	}
	var f Frame
	switch cmd {
	case smuxCmdSYN, smuxCmdFIN:
		if length != 0 {
			return Frame{}, protoErr(c.name, "cmd %d with length %d", cmd, length)
		}
		if stream == 0 {
			return Frame{}, protoErr(c.name, "cmd %d on stream 0", cmd)
		}
		f = Frame{Type: TypeWindow, Flags: FlagSYN, Stream: stream}
		if cmd == smuxCmdFIN {
			f.Flags = FlagFIN
		}
	case smuxCmdPSH:
		// An empty PSH is legal; smux skips it, and so may the engine.
		if stream == 0 {
			return Frame{}, protoErr(c.name, "data on stream 0")
		}
		f = Frame{Type: TypeData, Stream: stream, Length: uint32(length)}
	case smuxCmdNOP:
		if length != 0 {
			return Frame{}, protoErr(c.name, "nop with length %d", length)
		}
		if stream != 0 {
			return Frame{}, protoErr(c.name, "nop on stream %d", stream)
		}
		f = Frame{Type: TypeNop}
	case smuxCmdUPD:
		// smux 1.5.52 and later reject UPD in a v1 session; a v1 peer
		// that sent one would expect flow control we do not do.
		if c.version < 2 {
			return Frame{}, protoErr(c.name, "window update in version 1")
		}
		if length != smuxUpdLen {
			return Frame{}, protoErr(c.name, "window update with length %d", length)
		}
		if stream == 0 {
			return Frame{}, protoErr(c.name, "window update on stream 0")
		}
		h, err = peek(r, smuxHeaderLen+smuxUpdLen, false)
		if err != nil {
			return Frame{}, err
		}
		f = Frame{
			Type:   TypeWindow,
			Stream: stream,
			Value:  binary.LittleEndian.Uint32(h[8:12]),
			Window: binary.LittleEndian.Uint32(h[12:16]),
		}
		// Cannot fail: peek has just proved the bytes are buffered.
		_, _ = r.Discard(smuxHeaderLen + smuxUpdLen)
		return f, nil
	default:
		return Frame{}, protoErr(c.name, "unknown cmd %d", cmd)
	}
	// Cannot fail: peek has just proved the bytes are buffered.
	_, _ = r.Discard(smuxHeaderLen)
	return f, nil
}

// AppendFrame encodes f's header, and for a v2 window update its body.
// Flags must match one smux command exactly: smux has no ACK or RST and
// one command per frame, so anything else would lose meaning at the peer.
// Fields the command does not carry (Value and Window on SYN and FIN,
// anything but the type on NOP) are ignored, because the engine learns
// from Caps that smux drops them.
func (c *smuxCodec) AppendFrame(dst []byte, f Frame) ([]byte, error) {
	var cmd byte
	switch f.Type {
	case TypeData:
		if f.Flags != 0 || f.Stream == 0 || f.Length > smuxMaxPayload {
			return dst, unsupported(c.name, f)
		}
		return c.appendHeader(dst, smuxCmdPSH, uint16(f.Length), f.Stream), nil
	case TypeWindow:
		if f.Stream == 0 {
			return dst, unsupported(c.name, f)
		}
		switch f.Flags {
		case FlagSYN:
			cmd = smuxCmdSYN
		case FlagFIN:
			cmd = smuxCmdFIN
		case 0:
			if c.version < 2 {
				return dst, unsupported(c.name, f)
			}
			dst = c.appendHeader(dst, smuxCmdUPD, smuxUpdLen, f.Stream)
			dst = binary.LittleEndian.AppendUint32(dst, f.Value)
			dst = binary.LittleEndian.AppendUint32(dst, f.Window)
			return dst, nil
		default:
			return dst, unsupported(c.name, f)
		}
		return c.appendHeader(dst, cmd, 0, f.Stream), nil
	case TypeNop:
		return c.appendHeader(dst, smuxCmdNOP, 0, 0), nil
	}
	// TypePing and TypeGoAway: smux has neither; its NOP is never answered.
	return dst, unsupported(c.name, f)
}

// appendHeader appends one 8-byte little-endian smux header.
func (c *smuxCodec) appendHeader(dst []byte, cmd byte, length uint16, stream uint32) []byte {
	dst = append(dst, c.version, cmd)
	dst = binary.LittleEndian.AppendUint16(dst, length)
	return binary.LittleEndian.AppendUint32(dst, stream)
}
