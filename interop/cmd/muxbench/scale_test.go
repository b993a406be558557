package main

import (
	"context"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

// TestQuiesceCountsNoMemoryThatFinalizersAreStillFreeing: memory that
// slow finalizers release after a cell's first sample must not count
// against it. Here 4 MiB becomes garbage behind finalizers that take 20 ms
// each and run one after another, longer than quiesce's wait for the
// goroutine count to settle; its sample must not include that memory.
func TestQuiesceCountsNoMemoryThatFinalizersAreStillFreeing(t *testing.T) {
	r := &cellRun{ctx: context.Background()}
	base := quiesce(r)
	const n, size = 8, 512 << 10
	type held struct{ b []byte }
	// No collection may find the garbage before quiesce does.
	gcPercent := debug.SetGCPercent(-1)
	for range n {
		o := &held{make([]byte, size)}
		runtime.SetFinalizer(o, func(*held) { time.Sleep(20 * time.Millisecond) })
	}
	debug.SetGCPercent(gcPercent)
	got := quiesce(r)
	if grew := int64(got.heap) - int64(base.heap); grew > n*size/4 {
		t.Errorf("the sample holds %d bytes more than before the garbage was made: memory that finalizers were still freeing", grew)
	}
}
