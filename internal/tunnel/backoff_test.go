package tunnel

import (
	"testing"
	"time"
)

func TestBackoffDoublesToItsCapWithJitter(t *testing.T) {
	r := 0.0
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second, Rand: func() float64 { return r }}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000} // ms, before jitter
	for _, w := range want {
		w *= time.Millisecond
		r = 0
		lo := b.Next()
		b.n-- // draw the same step again with the other extreme of jitter
		r = 0.999999
		hi := b.Next()
		if lo != w/2 || hi < w*99/100 || hi >= w {
			t.Fatalf("step of %v: jitter range [%v, %v], want [%v, %v)", w, lo, hi, w/2, w)
		}
	}
	b.Reset()
	r = 0
	if d := b.Next(); d != 50*time.Millisecond {
		t.Errorf("after Reset: %v, want 50ms", d)
	}
}

func TestBackoffDefaultsCapAtTenSeconds(t *testing.T) {
	var b Backoff
	var last time.Duration
	for range 20 {
		last = b.Next()
		if last >= 10*time.Second {
			t.Fatalf("delay %v, want below the 10 s cap", last)
		}
	}
	if last < 5*time.Second {
		t.Errorf("after 20 failures the delay is %v, want at least half the cap", last)
	}
}
