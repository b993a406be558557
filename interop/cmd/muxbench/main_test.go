package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// TestQuick runs every workload on every contender in -quick mode and
// checks the JSON: every row and metric is there, and no polymux cell
// failed. A reference library's failure is only logged: that is what the
// runner is for.
func TestQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every library")
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"-quick", "-json"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d\n%s", code, errOut.String())
	}
	var rep report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("bad JSON: %v\n%s", err, out.String())
	}
	if len(rep.Rows) != len(allContenders()) {
		t.Fatalf("%d rows, want %d", len(rep.Rows), len(allContenders()))
	}
	if len(rep.Metrics) != 16 {
		t.Errorf("%d metrics, want 16", len(rep.Metrics))
	}
	for _, r := range rep.Rows {
		for _, m := range rep.Metrics {
			c, ok := r.Cells[m.Key]
			switch {
			case !ok:
				t.Errorf("%s: no %s cell", r.Library, m.Key)
			case len(c.Failures) > 0 && (r.Polymux || r.Library == rawTCP):
				t.Errorf("%s %s failed: %v", r.Library, m.Key, c.Failures)
			case len(c.Failures) > 0:
				t.Logf("%s %s failed: %v", r.Library, m.Key, c.Failures)
			case c.Median == nil:
				t.Errorf("%s: %s has no figure", r.Library, m.Key)
			}
		}
	}
}

// TestQuickScale runs the opt-in workloads, streams100k and sessions10k,
// on every contender with -quick's small counts, and checks their figures.
func TestQuickScale(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every library")
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"-quick", "-json", "-workloads", "streams100k,sessions10k"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d\n%s", code, errOut.String())
	}
	var rep report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("bad JSON: %v\n%s", err, out.String())
	}
	if rep.Settings.Streams100k != 1000 || rep.Settings.Sessions10k != 100 {
		t.Errorf("-quick: %d streams, %d pairs; want 1000 and 100", rep.Settings.Streams100k, rep.Settings.Sessions10k)
	}
	if len(rep.Rows) != len(allContenders()) {
		t.Fatalf("%d rows, want %d", len(rep.Rows), len(allContenders()))
	}
	if len(rep.Metrics) != 8 {
		t.Errorf("%d metrics, want 8", len(rep.Metrics))
	}
	for _, r := range rep.Rows {
		for _, m := range rep.Metrics {
			c, ok := r.Cells[m.Key]
			switch {
			case !ok:
				t.Errorf("%s: no %s cell", r.Library, m.Key)
			case len(c.Failures) > 0 && (r.Polymux || r.Library == rawTCP):
				t.Errorf("%s %s failed: %v", r.Library, m.Key, c.Failures)
			case len(c.Failures) > 0:
				t.Logf("%s %s failed: %v", r.Library, m.Key, c.Failures)
			case c.Median == nil:
				t.Errorf("%s: %s has no figure", r.Library, m.Key)
			case r.Library != rawTCP && m.Key == mS10kGorout.key && *c.Median < 1:
				// Every library keeps at least a reader per session.
				t.Errorf("%s: %s %v, want at least 1", r.Library, m.Key, *c.Median)
			case (m.Key == mS100kHeap.key || m.Key == mS10kHeap.key) && *c.Median <= 0:
				t.Errorf("%s: %s %v, want more than 0", r.Library, m.Key, *c.Median)
			}
		}
	}
}

func TestSelectWorkloads(t *testing.T) {
	b := &bench{streams: 1000}
	all := b.workloads()
	for spec, want := range map[string]string{
		"all":                             "bulk1 bulk1_1m bulk16 bulk16_1m bulk256 rpc rpc64 idle slowreader",
		"":                                "bulk1 bulk1_1m bulk16 bulk16_1m bulk256 rpc rpc64 idle slowreader",
		"sessions10k,idle":                "sessions10k idle",
		"all,streams100k,sessions10k":     "bulk1 bulk1_1m bulk16 bulk16_1m bulk256 rpc rpc64 idle slowreader streams100k sessions10k",
		"Streams100K, streams100k ,rpc64": "streams100k rpc64",
		"rpc,all":                         "rpc bulk1 bulk1_1m bulk16 bulk16_1m bulk256 rpc64 idle slowreader",
		"BULK16_1M,bulk1_1m":              "bulk16_1m bulk1_1m",
	} {
		ws, err := selectWorkloads(all, spec)
		if err != nil {
			t.Errorf("%q: %v", spec, err)
			continue
		}
		var names []string
		for _, w := range ws {
			names = append(names, w.name)
		}
		if got := strings.Join(names, " "); got != want {
			t.Errorf("%q: %s, want %s", spec, got, want)
		}
	}
}

// TestWriteSizes checks the bytes per Write of every workload that has
// one, and the metric keys of the bulk workloads: the 32 KiB ones keep
// the keys they had at 64 KiB, so older result files compare; slowreader
// keeps its 64 KiB writes.
func TestWriteSizes(t *testing.T) {
	b := &bench{streams: 1000}
	want := map[string]struct {
		size int
		keys string
	}{
		"bulk1":      {32 << 10, "bulk1_MBps bulk1_allocs_per_MiB"},
		"bulk1_1m":   {1 << 20, "bulk1_1MiB_MBps bulk1_1MiB_allocs_per_MiB"},
		"bulk16":     {32 << 10, "bulk16_MBps"},
		"bulk16_1m":  {1 << 20, "bulk16_1MiB_MBps"},
		"bulk256":    {32 << 10, "bulk256_MBps"},
		"slowreader": {64 << 10, "slowreader_MBps"},
	}
	for _, w := range b.workloads() {
		wt, ok := want[w.name]
		if !ok {
			if w.writeSize != 0 {
				t.Errorf("%s: %d-byte writes, want none", w.name, w.writeSize)
			}
			continue
		}
		delete(want, w.name)
		var keys []string
		for _, m := range w.metrics {
			keys = append(keys, m.key)
		}
		if w.writeSize != wt.size || strings.Join(keys, " ") != wt.keys {
			t.Errorf("%s: %d-byte writes, metrics %q; want %d and %q", w.name, w.writeSize, keys, wt.size, wt.keys)
		}
	}
	for name := range want {
		t.Errorf("no workload %s", name)
	}
}

// TestBulkSizes runs the bulk workloads at both write sizes on raw TCP and
// polymux-yamux, and checks the JSON: a figure in every cell, raw TCP's
// included, and the write sizes in the settings.
func TestBulkSizes(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"-quick", "-json", "-workloads", "bulk1,bulk1_1m,bulk16,bulk16_1m", "-libs", "polymux-yamux"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d\n%s", code, errOut.String())
	}
	var rep report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("bad JSON: %v\n%s", err, out.String())
	}
	var keys []string
	for _, m := range rep.Metrics {
		keys = append(keys, m.Key)
	}
	if got, want := strings.Join(keys, " "), "bulk1_MBps bulk1_allocs_per_MiB bulk1_1MiB_MBps bulk1_1MiB_allocs_per_MiB bulk16_MBps bulk16_1MiB_MBps"; got != want {
		t.Errorf("metrics %s, want %s", got, want)
	}
	if len(rep.Rows) != 2 {
		t.Fatalf("%d rows, want raw TCP and polymux-yamux", len(rep.Rows))
	}
	for _, r := range rep.Rows {
		for _, k := range keys {
			if c := r.Cells[k]; c.Median == nil || len(c.Failures) > 0 {
				t.Errorf("%s %s: no figure (%v)", r.Library, k, c.Failures)
			} else if r.Library != rawTCP && c.VsTCP == nil {
				t.Errorf("%s %s: no ratio to raw TCP", r.Library, k)
			}
		}
	}
	for name, size := range map[string]int{"bulk1": 32 << 10, "bulk1_1m": 1 << 20, "bulk16": 32 << 10, "bulk16_1m": 1 << 20} {
		if got := rep.Settings.WriteSizes[name]; got != size {
			t.Errorf("settings: %s writes %d bytes, want %d", name, got, size)
		}
	}
	if len(rep.Settings.WriteSizes) != 4 {
		t.Errorf("settings: write sizes %v, want the 4 workloads run", rep.Settings.WriteSizes)
	}
}

// TestMarkdown checks the table of a small run.
func TestMarkdown(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"-quick", "-workloads", "bulk1,bulk1_1m,rpc", "-libs", "yamux"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d\n%s", code, errOut.String())
	}
	table := out.String()
	for _, want := range []string{"| library | bulk1 MB/s | allocs/MiB | bulk1 1MiB MB/s | 1MiB allocs/MiB | rpc op/s |", "| raw TCP |", "| **polymux-yamux** |", "| hashicorp/yamux |", "| libp2p/go-yamux |"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, "| xtaci") || strings.Contains(table, "polymux-smux") {
		t.Errorf("-libs yamux ran smux:\n%s", table)
	}
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{{"-workloads", "nope"}, {"-libs", "nope"}, {"-reps", "0"}, {"-streams", "0"}, {"-sessions", "-1"}, {"extra"}} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}
