package tunnel

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
)

func TestPolicyAllowsWhatItsEntriesName(t *testing.T) {
	p := MustParsePolicy("10.0.0.0/8:80, 192.168.1.5:1000-2000, [fd00::/8]:*, localhost:22")
	for _, tc := range []struct {
		addr string
		port uint16
		want bool
	}{
		{"10.1.2.3", 80, true},
		{"10.1.2.3", 81, false},
		{"11.0.0.1", 80, false},
		{"192.168.1.5", 1000, true},
		{"192.168.1.5", 2000, true},
		{"192.168.1.5", 2001, false},
		{"192.168.1.6", 1500, false},
		{"fd12::1", 9, true},
		{"fe80::1", 9, false},
		{"127.0.0.1", 22, true},
		{"127.9.9.9", 22, true},
		{"::1", 22, true},
		{"::ffff:127.0.0.1", 22, true}, // an IPv4-mapped address is its IPv4 address
		{"127.0.0.1", 23, false},
		{"fd12::1", 0, true},   // "any port" covers port 0
		{"10.1.2.3", 0, false}, // one port does not
	} {
		if got := p.Allows(netip.MustParseAddr(tc.addr), tc.port); got != tc.want {
			t.Errorf("Allows(%s, %d) = %v, want %v", tc.addr, tc.port, got, tc.want)
		}
	}
}

func TestDefaultPoliciesAreLoopbackOnlyAndAny(t *testing.T) {
	for _, a := range []string{"127.0.0.1", "127.255.0.1", "::1"} {
		if !LoopbackOnly.Allows(netip.MustParseAddr(a), 8080) {
			t.Errorf("LoopbackOnly refuses %s", a)
		}
	}
	for _, a := range []string{"0.0.0.0", "10.0.0.1", "::", "::2", "192.168.0.1"} {
		if LoopbackOnly.Allows(netip.MustParseAddr(a), 8080) {
			t.Errorf("LoopbackOnly allows %s", a)
		}
		if !AnyAddress.Allows(netip.MustParseAddr(a), 8080) {
			t.Errorf("AnyAddress refuses %s", a)
		}
	}
}

func TestParsePolicyRejectsMalformedEntries(t *testing.T) {
	for _, s := range []string{"", ",", "10.0.0.1", "10.0.0.1:x", "example.com:80", "10.0.0.0/33:80", "1.2.3.4:0", "1.2.3.4:90-80", "1.2.3.4:70000", "1.2.3.4:0-10"} {
		if _, err := ParsePolicy(s); err == nil {
			t.Errorf("ParsePolicy(%q) succeeded", s)
		}
	}
}

// fakeResolver answers from a table, counting lookups; rebind, if set,
// answers every lookup after the first with it instead.
type fakeResolver struct {
	mu      sync.Mutex
	answers map[string][]netip.Addr
	rebind  []netip.Addr
	lookups int
}

func (r *fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lookups++
	if r.rebind != nil && r.lookups > 1 {
		return r.rebind, nil
	}
	a, ok := r.answers[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return a, nil
}

func TestResolveChecksEveryAddressOfAName(t *testing.T) {
	r := &fakeResolver{answers: map[string][]netip.Addr{
		"mixed": {netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("127.0.0.1")},
		"out":   {netip.MustParseAddr("10.0.0.1")},
	}}
	got, err := LoopbackOnly.Resolve(context.Background(), r, "mixed", 80)
	if err != nil || len(got) != 1 || got[0] != netip.MustParseAddrPort("127.0.0.1:80") {
		t.Errorf("Resolve(mixed) = %v, %v; want only 127.0.0.1:80", got, err)
	}
	if _, err := LoopbackOnly.Resolve(context.Background(), r, "out", 80); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("Resolve(out) error %v, want ErrNotAllowed", err)
	}
	if _, err := LoopbackOnly.Resolve(context.Background(), r, "", 80); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("every interface (0.0.0.0) is allowed by LoopbackOnly: %v", err)
	}
	if _, err := AnyAddress.Resolve(context.Background(), r, "nowhere", 80); err == nil || errors.Is(err, ErrNotAllowed) {
		t.Errorf("an unknown name: %v, want the lookup error", err)
	}
}

// TestDialTargetDialsTheAddressItChecked is the DNS-rebinding case: the
// name resolves to an allowed address once and to a forbidden one after
// that; the server must look up once and dial what it checked.
func TestDialTargetDialsTheAddressItChecked(t *testing.T) {
	r := &fakeResolver{
		answers: map[string][]netip.Addr{"rebind.test": {netip.MustParseAddr("127.0.0.1")}},
		rebind:  []netip.Addr{netip.MustParseAddr("10.9.9.9")},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var dialled []string
	s, err := NewServer(ServerConfig{
		TLS: ServerTLSConfig(testCert(t)), Token: []byte("x"), AllowForward: LoopbackOnly, Resolver: r,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dialled = append(dialled, addr)
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	conn, code, err := s.dialTarget(net.JoinHostPort("rebind.test", itoa(port)))
	if err != nil {
		t.Fatalf("dialTarget: %s %v", code, err)
	}
	conn.Close()
	if r.lookups != 1 || len(dialled) != 1 || dialled[0] != net.JoinHostPort("127.0.0.1", itoa(port)) {
		t.Errorf("%d lookups, dialled %v; want one lookup and a dial of 127.0.0.1", r.lookups, dialled)
	}
	if _, code, err := s.dialTarget("10.9.9.9:80"); code != codeNotAllowed || !errors.Is(err, ErrNotAllowed) {
		t.Errorf("a forbidden address: %s %v", code, err)
	}
	if len(dialled) != 1 {
		t.Errorf("a refused target was dialled: %v", dialled)
	}
}
