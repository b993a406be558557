package tunnel

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"time"
)

// The authentication, on the control stream, in four messages:
//
//	client: hello     {version, client id, client nonce}
//	server: challenge {server nonce}
//	client: auth      {mac = HMAC-SHA256(token, "client" | binding | nonces | client id)}
//	server: welcome   {mac = HMAC-SHA256(token, "server" | binding | nonces | client id)}
//	        or denied {reason, retry-after when throttled}
//
// binding is 32 bytes exported from the TLS session (RFC 8446 section 7.5),
// the same on both ends of one TLS connection and different on every other.
// A relay that terminates TLS towards the client and opens its own towards
// the server sees two bindings, so a proof it passes on fails: it cannot
// replay the client's proof to get in. The token itself never crosses the
// wire; proofs are compared in constant time. The server's proof shows the
// client that the server knows the token too.

// exporterLabel names the tunnel's keying material export.
const exporterLabel = "EXPORTER-polymux-tunnel-auth"

// nonceSize is the size of each side's random nonce.
const nonceSize = 32

// ErrAuthFailed is wrapped by the client's error when the server refused
// its token, or the server's error when a client's proof was wrong.
var ErrAuthFailed = errors.New("authentication failed")

// ThrottledError is the client's error when the server refused to evaluate
// the attempt because of earlier failures from this address.
type ThrottledError struct{ RetryAfter time.Duration }

// Error says how long to wait.
func (e *ThrottledError) Error() string {
	return fmt.Sprintf("the server is slowing down failed attempts from this address: retry after %v", e.RetryAfter)
}

// binding is the TLS session's keying material for the proofs.
func binding(cs tls.ConnectionState) ([]byte, error) {
	if cs.Version < tls.VersionTLS13 {
		return nil, errors.New("authentication needs TLS 1.3")
	}
	return cs.ExportKeyingMaterial(exporterLabel, nil, 32)
}

// proof is one side's MAC over everything that identifies this exchange.
func proof(token []byte, side string, bind, clientNonce, serverNonce []byte, clientID string) []byte {
	m := hmac.New(sha256.New, token)
	for _, part := range [][]byte{[]byte("polymux tunnel v1 " + side), bind, clientNonce, serverNonce, []byte(clientID)} {
		var n [2]byte
		n[0], n[1] = byte(len(part)>>8), byte(len(part))
		m.Write(n[:]) // length-prefixed, so no two different inputs concatenate alike
		m.Write(part)
	}
	return m.Sum(nil)
}

// newNonce returns nonceSize random bytes.
func newNonce() []byte {
	b := make([]byte, nonceSize)
	rand.Read(b) // never fails (crypto/rand panics instead, since Go 1.24)
	return b
}

// clientAuth runs the client's half of the exchange on rw, over the TLS
// session cs.
func clientAuth(rw io.ReadWriter, cs tls.ConnectionState, token []byte, clientID string) error {
	bind, err := binding(cs)
	if err != nil {
		return err
	}
	cn := newNonce()
	if err := writeMessage(rw, &message{Type: msgHello, Version: protocolVersion, ClientID: clientID, Nonce: cn}); err != nil {
		return err
	}
	m, err := readMessage(rw)
	if err != nil {
		return err
	}
	if m.Type == msgDenied {
		return denial(m)
	}
	if m.Type != msgChallenge || len(m.Nonce) != nonceSize {
		return fmt.Errorf("%w: want a challenge, got %q", errBadMessage, m.Type)
	}
	sn := m.Nonce
	if err := writeMessage(rw, &message{Type: msgAuth, MAC: proof(token, "client", bind, cn, sn, clientID)}); err != nil {
		return err
	}
	if m, err = readMessage(rw); err != nil {
		return err
	}
	switch m.Type {
	case msgDenied:
		return denial(m)
	case msgWelcome:
		if !hmac.Equal(m.MAC, proof(token, "server", bind, cn, sn, clientID)) {
			return fmt.Errorf("%w: the server does not know the token", ErrAuthFailed)
		}
		return nil
	}
	return fmt.Errorf("%w: want welcome or denied, got %q", errBadMessage, m.Type)
}

// denial is the client's error for a denied message.
func denial(m *message) error {
	if m.RetryAfterMS > 0 {
		return &ThrottledError{RetryAfter: time.Duration(m.RetryAfterMS) * time.Millisecond}
	}
	return fmt.Errorf("%w: the server says: %s", ErrAuthFailed, m.Reason)
}

// serverAuth runs the server's half on rw, over the TLS session cs. wait
// says how long attempts from this client's address must still wait (the
// throttle); it is asked once the proof is in, so a throttled client
// learns it without its proof being evaluated. It returns the client's id.
func serverAuth(rw io.ReadWriter, cs tls.ConnectionState, token []byte, wait func() time.Duration) (clientID string, err error) {
	bind, err := binding(cs)
	if err != nil {
		return "", err
	}
	hello, err := expect(rw, msgHello)
	if err != nil {
		return "", err
	}
	if hello.Version != protocolVersion {
		writeMessage(rw, &message{Type: msgDenied, Reason: fmt.Sprintf("protocol version %d is not spoken here (want %d)", hello.Version, protocolVersion)})
		return "", fmt.Errorf("%w: client speaks version %d", errBadMessage, hello.Version)
	}
	if len(hello.Nonce) != nonceSize || hello.ClientID == "" || len(hello.ClientID) > 64 {
		return "", fmt.Errorf("%w: bad hello", errBadMessage)
	}
	sn := newNonce()
	if err := writeMessage(rw, &message{Type: msgChallenge, Nonce: sn}); err != nil {
		return "", err
	}
	auth, err := expect(rw, msgAuth)
	if err != nil {
		return "", err
	}
	if d := wait(); d > 0 {
		ms := max(d.Milliseconds(), 1)
		writeMessage(rw, &message{Type: msgDenied, Reason: "too many failed attempts", RetryAfterMS: ms})
		return "", &ThrottledError{RetryAfter: d}
	}
	if !hmac.Equal(auth.MAC, proof(token, "client", bind, hello.Nonce, sn, hello.ClientID)) {
		writeMessage(rw, &message{Type: msgDenied, Reason: "wrong token"})
		return "", fmt.Errorf("%w: wrong token", ErrAuthFailed)
	}
	return hello.ClientID, writeMessage(rw, &message{Type: msgWelcome, MAC: proof(token, "server", bind, hello.Nonce, sn, hello.ClientID)})
}
