package tunnel

import (
	"net/netip"
	"testing"
	"time"
)

// clock is a settable time for the throttle.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestThrottleDoublesTheWaitAfterEachFailure(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	th := &Throttle{Base: time.Second, Max: 8 * time.Second, Now: c.now}
	ip := netip.MustParseAddr("192.0.2.1")
	if d := th.Wait(ip); d != 0 {
		t.Fatalf("a new address waits %v", d)
	}
	for _, want := range []time.Duration{1, 2, 4, 8, 8, 8} {
		th.Failed(ip)
		if d := th.Wait(ip); d != want*time.Second {
			t.Fatalf("after a failure: wait %v, want %v", d, want*time.Second)
		}
		c.advance(want * time.Second / 2)
		if d := th.Wait(ip); d != want*time.Second/2 {
			t.Fatalf("halfway: wait %v, want %v", d, want*time.Second/2)
		}
		c.advance(want * time.Second / 2)
		if d := th.Wait(ip); d != 0 {
			t.Fatalf("once the delay has passed: wait %v", d)
		}
	}
	if d := th.Wait(netip.MustParseAddr("192.0.2.2")); d != 0 {
		t.Errorf("another address waits %v", d)
	}
}

func TestThrottleForgivesAfterSuccessOrQuiet(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	th := &Throttle{Base: time.Second, Forget: time.Minute, Now: c.now}
	ip := netip.MustParseAddr("192.0.2.1")
	th.Failed(ip)
	th.Failed(ip)
	th.Succeeded(ip)
	th.Failed(ip)
	if d := th.Wait(ip); d != time.Second {
		t.Errorf("after a success the count restarts: wait %v, want 1s", d)
	}
	th.Failed(ip) // two in a row: 2 s
	c.advance(time.Minute)
	if d := th.Wait(ip); d != 0 {
		t.Errorf("a quiet minute forgets: wait %v", d)
	}
	th.Failed(ip)
	if d := th.Wait(ip); d != time.Second {
		t.Errorf("a failure after forgetting counts as the first: wait %v", d)
	}
}

func TestThrottleCountsIPv6ByPrefix(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	th := &Throttle{Now: c.now}
	th.Failed(netip.MustParseAddr("2001:db8:1:2::1"))
	if d := th.Wait(netip.MustParseAddr("2001:db8:1:2:ffff::9")); d == 0 {
		t.Error("another address of the same /64 is not slowed down")
	}
	if d := th.Wait(netip.MustParseAddr("2001:db8:1:3::1")); d != 0 {
		t.Errorf("another /64 waits %v", d)
	}
	th.Failed(netip.MustParseAddr("::ffff:192.0.2.7"))
	if d := th.Wait(netip.MustParseAddr("192.0.2.7")); d == 0 {
		t.Error("an IPv4-mapped address is not its IPv4 address")
	}
}

func TestThrottleTableStaysWithinItsSize(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	th := &Throttle{Size: 4, Forget: time.Hour, Now: c.now}
	first := netip.MustParseAddr("198.51.100.1")
	th.Failed(first)
	for i := 2; i <= 100; i++ {
		c.advance(time.Millisecond)
		th.Failed(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}))
		if n := th.Len(); n > 4 {
			t.Fatalf("%d entries after %d addresses, want at most 4", n, i)
		}
	}
	if d := th.Wait(first); d != 0 {
		t.Errorf("the oldest address was kept over newer ones (wait %v)", d)
	}
	if d := th.Wait(netip.AddrFrom4([4]byte{198, 51, 100, 100})); d == 0 {
		t.Error("the newest address was evicted")
	}
	c.advance(2 * time.Hour)
	th.Failed(first)
	if n := th.Len(); n != 1 {
		t.Errorf("expired entries not dropped when room was needed: %d entries", n)
	}
}
