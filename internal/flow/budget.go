package flow

import "sync/atomic"

// Budget bounds the bytes held across all streams of a session. It is safe
// for concurrent use.
type Budget struct {
	max  int64
	used atomic.Int64
}

// NewBudget returns a budget of max bytes.
func NewBudget(max int64) *Budget { return &Budget{max: max} }

// TryAcquire takes n bytes if the budget has room for them and reports
// whether it did.
func (b *Budget) TryAcquire(n int64) bool { return b.tryAcquireBelow(n, b.max) }

// TryReserve takes n bytes for window growth, which is held whether or not
// data arrives, only while the budget stays at most three quarters used:
// the last quarter is kept for data arriving in windows that did not grow,
// so growth never starves them.
func (b *Budget) TryReserve(n int64) bool { return b.tryAcquireBelow(n, b.max-b.max/4) }

func (b *Budget) tryAcquireBelow(n, limit int64) bool {
	for {
		used := b.used.Load()
		if used+n > limit {
			return false
		}
		if b.used.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

// Release returns n bytes taken by TryAcquire.
func (b *Budget) Release(n int64) { b.used.Add(-n) }

// Used is the number of bytes currently taken.
func (b *Budget) Used() int64 { return b.used.Load() }
