package tunnel

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// maxMessage is the largest encoded message: what fits the length prefix.
const maxMessage = 1<<16 - 1

// Message types. The control stream carries the first eight; a data
// stream starts with msgConnect (client to server, -L and -D) or
// msgReverseConn (server to client, -R), answered by msgReply.
const (
	msgHello       = "hello"        // client: version, client id, nonce
	msgChallenge   = "challenge"    // server: its nonce
	msgAuth        = "auth"         // client: its proof
	msgWelcome     = "welcome"      // server: accepted, with its own proof
	msgDenied      = "denied"       // server: refused (Reason; RetryAfterMS when throttled)
	msgPing        = "ping"         // either side: heartbeat
	msgPong        = "pong"         // the answer to a ping
	msgBye         = "bye"          // either side: draining, open nothing more
	msgDrained     = "drained"      // after a bye: nothing of mine is running any more
	msgReverse     = "reverse"      // client: register reverse forward ID on Bind
	msgReverseDone = "reverse-done" // server: the outcome (OK, Bound or Error, Code)
	msgConnect     = "connect"      // data stream: dial Target
	msgReverseConn = "reverse-conn" // data stream: a connection on reverse forward ID
	msgReply       = "reply"        // data stream: OK, or Error and Code
)

// Failure codes of a msgReply or msgReverseDone: what went wrong, in words
// a SOCKS5 reply can carry.
const (
	codeNotAllowed  = "not-allowed" // the server's policy forbids it
	codeRefused     = "refused"     // the target refused the connection
	codeNetUnreach  = "network-unreachable"
	codeHostUnreach = "host-unreachable" // includes names that do not resolve and dials that time out
	codeInUse       = "address-in-use"   // a reverse bind address is taken
	codeFailed      = "failed"           // anything else
)

// protocolVersion is what a hello announces; the server refuses others.
const protocolVersion = 1

// message is every message of the tunnel protocol: which fields are set
// depends on Type.
type message struct {
	Type string `json:"type"`

	Version  int    `json:"version,omitempty"`
	ClientID string `json:"client_id,omitempty"`
	Nonce    []byte `json:"nonce,omitempty"`
	MAC      []byte `json:"mac,omitempty"`

	Reason       string `json:"reason,omitempty"`
	RetryAfterMS int64  `json:"retry_after_ms,omitempty"`

	ID     int    `json:"id,omitempty"`
	Bind   string `json:"bind,omitempty"`
	Target string `json:"target,omitempty"`

	OK    bool   `json:"ok,omitempty"`
	Bound string `json:"bound,omitempty"`
	Error string `json:"error,omitempty"`
	Code  string `json:"code,omitempty"`
}

// writeMessage writes m as one length-prefixed frame in a single Write,
// so concurrent writers serialised by a mutex never interleave.
func writeMessage(w io.Writer, m *message) error {
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(body) > maxMessage {
		return fmt.Errorf("tunnel: %s message of %d bytes is too large", m.Type, len(body))
	}
	buf := make([]byte, 2+len(body))
	binary.BigEndian.PutUint16(buf, uint16(len(body)))
	copy(buf[2:], body)
	_, err = w.Write(buf)
	return err
}

// errBadMessage is wrapped by readMessage when the peer sent something
// that is not a message.
var errBadMessage = errors.New("tunnel: malformed message")

// readMessage reads exactly one message from r and nothing after it.
func readMessage(r io.Reader) (*message, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	body := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	m := new(message)
	if err := json.Unmarshal(body, m); err != nil {
		return nil, fmt.Errorf("%w: %v", errBadMessage, err)
	}
	if m.Type == "" {
		return nil, fmt.Errorf("%w: no type", errBadMessage)
	}
	return m, nil
}

// expect reads one message and checks its type.
func expect(r io.Reader, typ string) (*message, error) {
	m, err := readMessage(r)
	if err != nil {
		return nil, err
	}
	if m.Type != typ {
		return nil, fmt.Errorf("%w: got %q, want %q", errBadMessage, m.Type, typ)
	}
	return m, nil
}
