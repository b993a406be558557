package tunnel

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestIdentityIsCreatedOnceAndKept(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	now := time.Now()
	a, created, err := LoadOrCreateIdentity(dir, now)
	if err != nil || !created {
		t.Fatalf("first start: created %v, %v", created, err)
	}
	if _, ok := a.PrivateKey.(*ecdsa.PrivateKey); !ok || a.Leaf.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() {
		t.Errorf("key is %T, want ECDSA P-256", a.PrivateKey)
	}
	fi, err := os.Stat(filepath.Join(dir, keyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	b, created, err := LoadOrCreateIdentity(dir, now.Add(time.Hour))
	if err != nil || created {
		t.Fatalf("restart: created %v, %v", created, err)
	}
	if Fingerprint(a.Leaf) != Fingerprint(b.Leaf) || !a.Leaf.Equal(b.Leaf) {
		t.Error("a restart changed the identity")
	}
	fp := Fingerprint(a.Leaf)
	if !strings.HasPrefix(fp, "SHA256:") || len(fp) != len("SHA256:")+43 {
		t.Errorf("fingerprint %q: want SHA256: and 43 characters", fp)
	}
	if _, err := ParseFingerprint(fp); err != nil {
		t.Errorf("ParseFingerprint(%q): %v", fp, err)
	}
	for _, bad := range []string{"", "MD5:abc", "SHA256:", "SHA256:" + strings.Repeat("A", 42), fp + "="} {
		if _, err := ParseFingerprint(bad); err == nil {
			t.Errorf("ParseFingerprint(%q) succeeded", bad)
		}
	}
}

func TestIdentityRenewedNearExpiryKeepsTheKey(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	a, _, err := LoadOrCreateIdentity(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	later := a.Leaf.NotAfter.Add(-renewBefore / 2)
	b, created, err := LoadOrCreateIdentity(dir, later)
	if err != nil || created {
		t.Fatalf("renewal: created %v, %v", created, err)
	}
	if a.Leaf.Equal(b.Leaf) {
		t.Fatal("a certificate about to expire was not re-issued")
	}
	if Fingerprint(a.Leaf) != Fingerprint(b.Leaf) {
		t.Error("re-issuing the certificate changed the fingerprint")
	}
	if !b.Leaf.NotAfter.After(later.Add(renewBefore)) {
		t.Errorf("re-issued certificate ends %v", b.Leaf.NotAfter)
	}
}

// handshake runs a TLS handshake of a client with conf against a server
// with cert, over loopback TCP, and returns the client's error.
func handshake(t *testing.T, cert tls.Certificate, conf *tls.Config) error {
	t.Helper()
	c, s := loopbackPair(t)
	srvErr := make(chan error, 1)
	go func() {
		ts := tls.Server(s, ServerTLSConfig(cert))
		srvErr <- ts.Handshake()
		ts.Close()
	}()
	tc := tls.Client(c, conf)
	err := tc.Handshake()
	tc.Close()
	<-srvErr
	return err
}

func TestTrustPinsTheKey(t *testing.T) {
	cert, other := testCert(t), testCert(t)
	fp := Fingerprint(cert.Leaf)
	if err := handshake(t, cert, (&Trust{Fingerprint: fp}).TLSConfig()); err != nil {
		t.Errorf("the pinned server: %v", err)
	}
	var mm *MismatchError
	if err := handshake(t, other, (&Trust{Fingerprint: fp}).TLSConfig()); !errors.As(err, &mm) || mm.Got != Fingerprint(other.Leaf) {
		t.Errorf("another key: %v, want a MismatchError naming it", err)
	}
	var unknown *UnknownServerError
	if err := handshake(t, cert, (&Trust{}).TLSConfig()); !errors.As(err, &unknown) || unknown.Fingerprint != fp ||
		!strings.Contains(err.Error(), "-fingerprint "+fp) {
		t.Errorf("no pin: %v, want an UnknownServerError with the flag to pass", err)
	}
}

func TestTrustOnFirstUsePinsTheFirstKey(t *testing.T) {
	cert, other := testCert(t), testCert(t)
	tofu := &Trust{TOFU: true}
	if err := handshake(t, cert, tofu.TLSConfig()); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if err := handshake(t, cert, tofu.TLSConfig()); err != nil {
		t.Errorf("the same key again: %v", err)
	}
	var mm *MismatchError
	if err := handshake(t, other, tofu.TLSConfig()); !errors.As(err, &mm) {
		t.Errorf("another key after first use: %v, want a MismatchError", err)
	}
}

func TestTrustVerifiesAgainstACA(t *testing.T) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "tunnel"},
		DNSNames: []string{"tunnel.test"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	signed := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644)
	roots, err := LoadRoots(caFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, signed, (&Trust{Roots: roots, ServerName: "tunnel.test"}).TLSConfig()); err != nil {
		t.Errorf("a CA-signed server: %v", err)
	}
	var mm *MismatchError
	if err := handshake(t, signed, (&Trust{Roots: roots, ServerName: "other.test"}).TLSConfig()); !errors.As(err, &mm) {
		t.Errorf("the wrong name: %v, want a MismatchError", err)
	}
	if err := handshake(t, testCert(t), (&Trust{Roots: roots, ServerName: "tunnel.test"}).TLSConfig()); !errors.As(err, &mm) {
		t.Errorf("a self-signed server: %v, want a MismatchError", err)
	}
	if err := handshake(t, signed, (&Trust{Roots: roots, ServerName: "tunnel.test", Fingerprint: Fingerprint(testCert(t).Leaf)}).TLSConfig()); !errors.As(err, &mm) {
		t.Errorf("CA and a pin of another key: %v, want a MismatchError", err)
	}
}

func TestReadTokenTrimsAndRefusesEmpty(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(s), 0o600)
		return p
	}
	if tok, err := ReadToken(write("a", "  s3cret\n\n")); err != nil || string(tok) != "s3cret" {
		t.Errorf("ReadToken = %q, %v", tok, err)
	}
	if _, err := ReadToken(write("b", " \n\t")); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("an empty token: %v", err)
	}
	if _, err := ReadToken(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing token file was read")
	}
}
