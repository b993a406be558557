package tunnel

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// The files of a server's state directory.
const (
	keyFile  = "tunnel-server.key" // PKCS #8, mode 0600
	certFile = "tunnel-server.crt"
)

// certLifetime is how long a generated certificate is valid, and
// renewBefore how close to its end a new one is issued on start-up, with
// the same key: clients pin the key, so they never notice.
const (
	certLifetime = 397 * 24 * time.Hour
	renewBefore  = 30 * 24 * time.Hour
)

// ALPN is the protocol name both sides insist on in the TLS handshake, so
// that a tunnel client never mistakes another TLS service for a server.
const ALPN = "polymux-tunnel/1"

// LoadOrCreateIdentity returns the server's certificate from dir: created
// (an ECDSA P-256 key and a self-signed certificate) the first time, read
// back on every later start. A certificate that has expired or will
// within 30 days is re-issued with the same key, so the fingerprint stays.
// created reports whether a new key was made.
func LoadOrCreateIdentity(dir string, now time.Time) (cert tls.Certificate, created bool, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, false, err
	}
	keyPath := filepath.Join(dir, keyFile)
	key, err := readKey(keyPath)
	if errors.Is(err, os.ErrNotExist) {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err == nil {
			err = writeKey(keyPath, key)
		}
		created = true
	}
	if err != nil {
		return tls.Certificate{}, false, err
	}
	certPath := filepath.Join(dir, certFile)
	leaf, err := readCert(certPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return tls.Certificate{}, false, err
	}
	if err != nil || !sameKey(leaf, key) || now.Add(renewBefore).After(leaf.NotAfter) {
		if leaf, err = issue(key, now); err != nil {
			return tls.Certificate{}, false, err
		}
		pemCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})
		if err := writeFileAtomic(certPath, pemCert, 0o644); err != nil {
			return tls.Certificate{}, false, err
		}
	}
	return tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}, created, nil
}

// readKey reads a PKCS #8 ECDSA key from a PEM file.
func readKey(path string) (*ecdsa.PrivateKey, error) {
	der, err := readPEM(path, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an ECDSA key", path)
	}
	return key, nil
}

// writeKey writes key to path, readable by its owner only.
func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// readCert reads the first certificate of a PEM file.
func readCert(path string) (*x509.Certificate, error) {
	der, err := readPEM(path, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// readPEM returns the DER of the first PEM block in path, which must be of
// type typ.
func readPEM(path, typ string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != typ {
		return nil, fmt.Errorf("%s: no %s block", path, typ)
	}
	return block.Bytes, nil
}

// sameKey reports whether cert carries key's public half.
func sameKey(cert *x509.Certificate, key *ecdsa.PrivateKey) bool {
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(key.Public())
}

// issue makes a self-signed certificate for key, valid from an hour before
// now (clocks disagree) for certLifetime.
func issue(key *ecdsa.PrivateKey, now time.Time) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "polymux tunnel server"},
		DNSNames:              []string{"polymux-tunnel"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory, created with perm, so that a crash never leaves half a key
// and the key is never readable by others, not even for a moment.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// LoadKeyPair reads a certificate chain and its key, as given by
// -tls-cert and -tls-key.
func LoadKeyPair(certPath, keyPath string) (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return tls.Certificate{}, err
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return tls.Certificate{}, err
		}
	}
	return cert, nil
}

// Fingerprint is how a server's key is named and pinned: "SHA256:" and the
// unpadded base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo
// in DER, the form ssh prints. It names the key, not the certificate, so a
// re-issued certificate keeps it.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// ParseFingerprint checks the form of a -fingerprint value and returns it
// as Fingerprint would print it.
func ParseFingerprint(s string) (string, error) {
	b64, ok := strings.CutPrefix(s, "SHA256:")
	if !ok {
		return "", fmt.Errorf("fingerprint %q: want SHA256:<43 characters of base64>", s)
	}
	sum, err := base64.RawStdEncoding.DecodeString(b64)
	if err != nil || len(sum) != sha256.Size {
		return "", fmt.Errorf("fingerprint %q: want SHA256:<43 characters of base64>", s)
	}
	return s, nil
}

// Trust is how a client decides that it reached its server.
type Trust struct {
	Fingerprint string         // pinned key, as Fingerprint prints it; "" for none
	Roots       *x509.CertPool // CAs for -ca-file; nil for none
	ServerName  string         // the name the CA-signed certificate must carry
	// TOFU, with neither of the above, trusts the first key seen and pins
	// it for the life of the client.
	TOFU bool

	mu   sync.Mutex // guards seen
	seen string     // the key trusted on first use
}

// UnknownServerError is the failure of a handshake with a server the
// client has no way to trust: neither a fingerprint nor a CA was given.
type UnknownServerError struct{ Fingerprint string }

// Error names the fingerprint seen and the flag that trusts it.
func (e *UnknownServerError) Error() string {
	return fmt.Sprintf("the server's key is not trusted: its fingerprint is %s; if that is your server, pass -fingerprint %s (or -ca-file with the CA that signed its certificate)", e.Fingerprint, e.Fingerprint)
}

// MismatchError is the failure of a handshake with a server whose key or
// certificate is not the one trusted.
type MismatchError struct {
	Got, Want string // fingerprints; Want is "" when the CA check failed
	Err       error  // the CA check's error, if that failed
}

// Error names the key seen and what it was checked against.
func (e *MismatchError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("the server's certificate (key %s) does not verify against -ca-file: %v", e.Got, e.Err)
	}
	return fmt.Sprintf("the server's key is %s, not the trusted %s: someone may be impersonating the server, or its key changed", e.Got, e.Want)
}

// TLSConfig is the client's TLS configuration: TLS 1.3 (the auth binds
// to its exporter), the tunnel's ALPN, and every check done in
// VerifyConnection on every handshake, first and reconnects alike.
func (t *Trust) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{ALPN},
		ServerName:         t.ServerName,
		InsecureSkipVerify: true, // replaced by VerifyConnection, which pins the key or checks the CA itself
		VerifyConnection:   t.verify,
	}
}

// verify checks one handshake's peer against the trust settings.
func (t *Trust) verify(cs tls.ConnectionState) error {
	if cs.NegotiatedProtocol != ALPN {
		return fmt.Errorf("the server does not speak %s (ALPN %q)", ALPN, cs.NegotiatedProtocol)
	}
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the server sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	got := Fingerprint(leaf)
	if t.Roots != nil {
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: t.Roots, Intermediates: inter, DNSName: t.ServerName})
		if err != nil {
			return &MismatchError{Got: got, Err: err}
		}
	}
	if t.Fingerprint != "" {
		if got != t.Fingerprint {
			return &MismatchError{Got: got, Want: t.Fingerprint}
		}
		return nil
	}
	if t.Roots != nil {
		return nil
	}
	if !t.TOFU {
		return &UnknownServerError{Fingerprint: got}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.seen == "" {
		t.seen = got
	}
	if got != t.seen {
		return &MismatchError{Got: got, Want: t.seen}
	}
	return nil
}

// ServerTLSConfig is the server's TLS configuration for cert.
func ServerTLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{ALPN},
		Certificates: []tls.Certificate{cert},
	}
}

// LoadRoots reads a PEM file of CA certificates for -ca-file.
func LoadRoots(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%s: no PEM certificate in it", path)
	}
	return pool, nil
}

// ReadToken reads the shared token from path: surrounding whitespace
// (a trailing newline, say) is not part of it, and an empty token is an
// error.
func ReadToken(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	tok := bytes.TrimSpace(data)
	if len(tok) == 0 {
		return nil, fmt.Errorf("token file %s is empty", path)
	}
	return tok, nil
}
