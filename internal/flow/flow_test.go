package flow

import (
	"errors"
	"math"
	"sync"
	"testing"
)

func TestSendCreditIsSpentAndGrownByDeltas(t *testing.T) {
	s := NewSend(256 << 10)
	s.Spend(100 << 10)
	if got := s.Avail(); got != 156<<10 {
		t.Fatalf("avail after spend = %d, want %d", got, 156<<10)
	}
	if err := s.Grow(100 << 10); err != nil {
		t.Fatal(err)
	}
	if got := s.Avail(); got != 256<<10 {
		t.Fatalf("avail after grow = %d", got)
	}
}

func TestSendRefusesAnUpdateThatOverflows32Bits(t *testing.T) {
	s := NewSend(256 << 10)
	if err := s.Grow(math.MaxUint32 - 256<<10); err != nil {
		t.Fatalf("growing exactly to 2^32-1 must work: %v", err)
	}
	if err := s.Grow(1); !errors.Is(err, ErrOverflow) {
		t.Fatalf("growing past 2^32-1: err = %v, want ErrOverflow", err)
	}
	if s.Avail() != math.MaxUint32 {
		t.Fatalf("a refused update changed the credit to %d", s.Avail())
	}
}

func TestSendAbsoluteUpdatesCountInflightBytes(t *testing.T) {
	s := NewSend(256 << 10)
	s.Spend(200 << 10)
	if err := s.Update(50<<10, 64<<10); err != nil {
		t.Fatal(err)
	}
	// 150 KiB are in flight against a 64 KiB window: no credit.
	if s.Avail() != 0 {
		t.Fatalf("avail = %d, want 0", s.Avail())
	}
	if err := s.Update(190<<10, 64<<10); err != nil {
		t.Fatal(err)
	}
	if s.Avail() != 54<<10 {
		t.Fatalf("avail = %d, want %d", s.Avail(), 54<<10)
	}
	if err := s.Update(201<<10, 64<<10); !errors.Is(err, ErrConsumed) {
		t.Fatalf("consumed beyond sent: err = %v", err)
	}
}

func TestSendAbsoluteUpdatesWrapModulo32Bits(t *testing.T) {
	s := Send{avail: 1 << 20, accepted: math.MaxUint32 - 10}
	s.Spend(100) // accepted wraps to 89
	if err := s.Update(math.MaxUint32-10, 1<<20); err != nil {
		t.Fatalf("update across the wrap: %v", err)
	}
	if s.Avail() != 1<<20-100 {
		t.Fatalf("avail = %d", s.Avail())
	}
}

func TestRecvRejectsDataBeyondTheWindow(t *testing.T) {
	r := NewRecv(256<<10, 256<<10)
	if err := r.Receive(256 << 10); err != nil {
		t.Fatal(err)
	}
	if err := r.Receive(1); !errors.Is(err, ErrOverrun) {
		t.Fatalf("err = %v, want ErrOverrun", err)
	}
	if r.Buffered() != 256<<10 {
		t.Fatalf("buffered = %d", r.Buffered())
	}
}

func TestRecvBatchesUpdatesAtHalfTheWindow(t *testing.T) {
	r := NewRecv(256<<10, 256<<10)
	if err := r.Receive(200 << 10); err != nil {
		t.Fatal(err)
	}
	r.Read(100 << 10)
	if d, ok := r.Update(false); ok {
		t.Fatalf("update of %d sent before half the window was read", d)
	}
	r.Read(28 << 10)
	d, ok := r.Update(false)
	if !ok || d != 128<<10 {
		t.Fatalf("update = %d, %v; want %d", d, ok, 128<<10)
	}
	// The peer may now send its remaining 56 KiB plus the 128 KiB returned.
	if err := r.Receive(184 << 10); err != nil {
		t.Fatal(err)
	}
	if err := r.Receive(1); !errors.Is(err, ErrOverrun) {
		t.Fatal("credit beyond the window")
	}
}

func TestRecvForcedUpdateReturnsAnyReadBytes(t *testing.T) {
	r := NewRecv(256<<10, 256<<10)
	_ = r.Receive(10)
	r.Read(10)
	if d, ok := r.Update(true); !ok || d != 10 {
		t.Fatalf("forced update = %d, %v", d, ok)
	}
	if _, ok := r.Update(true); ok {
		t.Fatal("a forced update with nothing read must not send")
	}
}

func TestRecvLargerWindowOwesTheDifferenceUpFront(t *testing.T) {
	r := NewRecv(1<<20, 256<<10)
	d, ok := r.Update(true)
	if !ok || d != 1<<20-256<<10 {
		t.Fatalf("initial grant = %d, %v", d, ok)
	}
	if err := r.Receive(1 << 20); err != nil {
		t.Fatalf("the whole window must be usable after the grant: %v", err)
	}
}

func TestRecvKeepsItsInvariant(t *testing.T) {
	r := NewRecv(256<<10, 256<<10)
	steps := []uint32{1, 1000, 65536, 7, 4096, 100000}
	for _, n := range steps {
		if err := r.Receive(n); err != nil {
			t.Fatal(err)
		}
		r.Read(n / 2)
		r.Update(false)
		if r.credit+r.buffered+r.pending != r.window {
			t.Fatalf("invariant broken after %d: %+v", n, r)
		}
	}
	if r.Consumed() == 0 {
		t.Fatal("consumed not counted")
	}
}

func TestBudgetRefusesPastItsMaximum(t *testing.T) {
	b := NewBudget(100)
	if !b.TryAcquire(60) || !b.TryAcquire(40) {
		t.Fatal("acquire within the budget failed")
	}
	if b.TryAcquire(1) {
		t.Fatal("acquired past the maximum")
	}
	b.Release(50)
	if !b.TryAcquire(50) || b.Used() != 100 {
		t.Fatalf("used = %d", b.Used())
	}
}

func TestBudgetNeverExceedsItsMaximumUnderContention(t *testing.T) {
	b := NewBudget(1000)
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				if b.TryAcquire(7) {
					mu.Lock()
					got += 7
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if got > 1000 || b.Used() != int64(got) {
		t.Fatalf("acquired %d, used %d, max 1000", got, b.Used())
	}
}

func TestBudgetKeepsAQuarterFromReservations(t *testing.T) {
	b := NewBudget(400)
	if !b.TryReserve(300) {
		t.Fatal("reserving three quarters failed")
	}
	if b.TryReserve(1) {
		t.Fatal("reserved into the last quarter")
	}
	if !b.TryAcquire(100) {
		t.Fatal("data could not use the last quarter")
	}
}

func TestModeNoneHasNoWindowAtAll(t *testing.T) {
	s := NewSendFor(ModeNone, 256<<10)
	s.Spend(1 << 30)
	if s.Avail() != math.MaxUint32 || s.Apply(1, 2) != nil {
		t.Fatalf("a send side without windows ran out of credit: %d", s.Avail())
	}
	r := NewRecvFor(ModeNone, 256<<10, 256<<10)
	for range 3 {
		if !r.Fits(1<<30) || r.Receive(1<<30) != nil {
			t.Fatal("a receive side without windows refused data")
		}
		r.Read(1 << 30)
	}
	if r.UpdateDue(true) || r.Advertised() != 0 {
		t.Fatal("a receive side without windows owes the peer an update")
	}
	if _, _, ok := r.Grant(true); ok {
		t.Fatal("a receive side without windows granted credit")
	}
}

func TestGrantSpeaksEachModesUpdate(t *testing.T) {
	for _, m := range []Mode{ModeDelta, ModeAbsolute} {
		r := NewRecvFor(m, 256<<10, 256<<10)
		r.Receive(200 << 10)
		r.Read(200 << 10)
		v, w, ok := r.Grant(false)
		switch {
		case !ok:
			t.Fatalf("mode %d: no grant after reading more than half the window", m)
		case m == ModeDelta && (v != 200<<10 || w != 0):
			t.Fatalf("delta grant (%d, %d), want (200 KiB, 0)", v, w)
		case m == ModeAbsolute && (v != 200<<10 || w != 256<<10):
			t.Fatalf("absolute grant (%d, %d), want (consumed 200 KiB, window 256 KiB)", v, w)
		}
	}
}
