package flow

import (
	"testing"
	"time"
)

const kib = 1 << 10

// readWindowHalf simulates the peer filling half the window and the
// application reading it all, dt after the previous epoch.
func readWindowHalf(t *testing.T, r *Recv) uint32 {
	t.Helper()
	half := r.Window() / 2
	if err := r.Receive(half); err != nil {
		t.Fatal(err)
	}
	r.Read(half)
	return half
}

func TestTuneDoublesAWindowConsumedFasterThanTheRoundTrip(t *testing.T) {
	b := NewBudget(64 << 20)
	r := NewRecv(256*kib, 256*kib)
	rtt := 50 * time.Millisecond
	now := time.Second
	r.StartEpoch(now)
	for _, want := range []uint32{512 * kib, 1024 * kib, 2048 * kib, 4096 * kib} {
		readWindowHalf(t, &r)
		now += rtt / 2 // half a window per half round trip: window-limited
		if grown := r.Tune(now, rtt, 16<<20, b); r.Window() != want || grown != want/2 {
			t.Fatalf("window %d (grew %d), want %d", r.Window(), grown, want)
		}
		if _, ok := r.Update(false); !ok {
			t.Fatal("the growth must be granted to the peer at once")
		}
	}
	if b.Used() != int64(4096*kib-256*kib) {
		t.Fatalf("budget holds %d, want the growth %d", b.Used(), 4096*kib-256*kib)
	}
}

func TestTuneKeepsGrowingOnALongLink(t *testing.T) {
	// go-yamux issue 136: a fixed 4-RTT threshold stalls near twice the
	// initial window once reading half a larger window takes longer than
	// that. Here each epoch reads half the window at a fixed 100 MB/s over
	// a 50 ms link: the window still grows until it covers the link.
	b := NewBudget(1 << 30)
	r := NewRecv(256*kib, 256*kib)
	rtt := 50 * time.Millisecond
	now := time.Second
	r.StartEpoch(now)
	for range 20 {
		n := readWindowHalf(t, &r)
		// window-limited: half a window per half round trip, or the
		// link's 100 MB/s, whichever is slower.
		now += max(rtt/2, time.Duration(float64(n)/100e6*float64(time.Second)))
		r.Tune(now, rtt, 64<<20, b)
		r.Update(false)
	}
	bdp := uint32(100e6 * rtt.Seconds()) // 5 MB in flight fills the link
	if r.Window() < bdp {
		t.Fatalf("window stalled at %d, below the link's bandwidth-delay product %d", r.Window(), bdp)
	}
}

func TestTuneLeavesAWindowTheReaderCannotKeepUpWith(t *testing.T) {
	b := NewBudget(64 << 20)
	r := NewRecv(256*kib, 256*kib)
	rtt := 10 * time.Millisecond
	now := time.Second
	r.StartEpoch(now)
	readWindowHalf(t, &r)
	now += time.Second // slow reader: half a window per second
	if grown := r.Tune(now, rtt, 16<<20, b); grown != 0 || r.Window() != 256*kib {
		t.Fatalf("grew by %d to %d for a slow reader", grown, r.Window())
	}
}

func TestTuneStopsAtTheCeiling(t *testing.T) {
	b := NewBudget(64 << 20)
	r := NewRecv(256*kib, 256*kib)
	now := time.Second
	r.StartEpoch(now)
	for range 10 {
		readWindowHalf(t, &r)
		now += time.Millisecond
		r.Tune(now, 50*time.Millisecond, 1<<20, b)
		r.Update(false)
	}
	if r.Window() != 1<<20 {
		t.Fatalf("window %d, want the 1 MiB ceiling", r.Window())
	}
}

func TestTuneNeedsRoomInTheBudget(t *testing.T) {
	b := NewBudget(300 * kib) // growth may use three quarters: 225 KiB
	r := NewRecv(256*kib, 256*kib)
	now := time.Second
	r.StartEpoch(now)
	readWindowHalf(t, &r)
	now += time.Millisecond
	if grown := r.Tune(now, 50*time.Millisecond, 16<<20, b); grown != 0 {
		t.Fatalf("grew by %d with only 225 KiB of budget for growth", grown)
	}
	if b.Used() != 0 {
		t.Fatalf("a refused growth holds %d of the budget", b.Used())
	}
}

func TestTuneWithoutARoundTripDoesNothing(t *testing.T) {
	b := NewBudget(64 << 20)
	r := NewRecv(256*kib, 256*kib)
	r.StartEpoch(time.Second)
	readWindowHalf(t, &r)
	if grown := r.Tune(time.Second+time.Microsecond, 0, 16<<20, b); grown != 0 {
		t.Fatal("grew with no RTT measured")
	}
}

func TestChargesNeverCountAByteTwice(t *testing.T) {
	b := NewBudget(64 << 20)
	r := NewRecv(256*kib, 256*kib)
	r.StartEpoch(time.Second)
	readWindowHalf(t, &r)
	r.Tune(time.Second+time.Millisecond, 50*time.Millisecond, 16<<20, b) // window 512 KiB, 256 KiB reserved
	r.Update(true)
	if r.Held() != 256*kib {
		t.Fatalf("held %d, want the 256 KiB reservation", r.Held())
	}
	// The first 256 KiB buffered fall within the reservation.
	if c := r.Charge(256 * kib); c != 0 {
		t.Fatalf("charge %d within the reservation", c)
	}
	_ = r.Receive(256 * kib)
	if c := r.Charge(100 * kib); c != 100*kib {
		t.Fatalf("charge %d beyond the reservation, want %d", c, 100*kib)
	}
	_ = r.Receive(100 * kib)
	if r.Held() != 356*kib {
		t.Fatalf("held %d, want %d", r.Held(), 356*kib)
	}
	if f := r.Refund(150 * kib); f != 100*kib {
		t.Fatalf("refund %d, want %d", f, 100*kib)
	}
	r.Read(150 * kib)
	if r.Held() != 256*kib {
		t.Fatalf("held after reading %d, want the reservation", r.Held())
	}
}

func TestGrowthOverBufferedBytesChargesOnlyTheDifference(t *testing.T) {
	b := NewBudget(64 << 20)
	r := NewRecv(256*kib, 256*kib)
	r.StartEpoch(time.Second)
	// 200 KiB arrive and are charged; 128 KiB are read, so an update is due
	// with 72 KiB still buffered.
	if !b.TryAcquire(int64(r.Charge(200 * kib))) {
		t.Fatal("charge refused")
	}
	_ = r.Receive(200 * kib)
	b.Release(int64(r.Refund(128 * kib)))
	r.Read(128 * kib)
	r.Tune(time.Second+time.Millisecond, 50*time.Millisecond, 16<<20, b)
	if r.Window() != 512*kib {
		t.Fatalf("window %d", r.Window())
	}
	// Held is the 256 KiB reservation, which covers the 72 KiB buffered.
	if b.Used() != int64(r.Held()) || r.Held() != 256*kib {
		t.Fatalf("budget used %d, held %d", b.Used(), r.Held())
	}
	b.Release(int64(r.Refund(72 * kib)))
	r.Read(72 * kib)
	b.Release(int64(r.Finish()))
	if b.Used() != 0 || r.Held() != 0 {
		t.Fatalf("after reading all and finishing: used %d, held %d", b.Used(), r.Held())
	}
}

func TestTuneLeavesAFastLocalLinkAlone(t *testing.T) {
	// Loopback: a 50 µs round trip at 2 GB/s needs 100 KB in flight; the
	// 256 KiB window is not what limits, so it must not grow (a 16 MiB
	// window there only spills the data out of the caches).
	b := NewBudget(64 << 20)
	r := NewRecv(256*kib, 256*kib)
	now := time.Second
	r.StartEpoch(now)
	for range 10 {
		n := readWindowHalf(t, &r)
		now += time.Duration(float64(n) / 2e9 * float64(time.Second))
		if grown := r.Tune(now, 50*time.Microsecond, 16<<20, b); grown != 0 {
			t.Fatalf("grew by %d to %d on a link the window does not limit", grown, r.Window())
		}
		r.Update(false)
	}
}

func TestTuneWithGrowsOnlyWhenTheSecondSayAgrees(t *testing.T) {
	b := NewBudget(64 << 20)
	for _, agree := range []bool{false, true} {
		r := NewRecv(256*kib, 256*kib)
		r.StartEpoch(time.Second)
		r.Receive(256 * kib)
		r.Read(256 * kib)
		var asked uint32
		grown := r.TuneWith(time.Second+time.Millisecond, 50*time.Millisecond, 16<<20, b, func(grow uint32) bool {
			asked = grow
			return agree
		})
		switch {
		case asked != 256*kib:
			t.Fatalf("asked for %d bytes, want the growth of 256 KiB", asked)
		case agree && (grown != 256*kib || r.Window() != 512*kib || b.Used() != 256*kib):
			t.Fatalf("agreed: grew %d to %d, budget %d", grown, r.Window(), b.Used())
		case !agree && (grown != 0 || r.Window() != 256*kib || b.Used() != 0):
			t.Fatalf("refused: grew %d to %d, budget %d; want nothing held", grown, r.Window(), b.Used())
		}
	}
}
