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
	if len(rep.Metrics) != 13 {
		t.Errorf("%d metrics, want 13", len(rep.Metrics))
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
		"all":                             "bulk1 bulk16 bulk256 rpc rpc64 idle slowreader",
		"":                                "bulk1 bulk16 bulk256 rpc rpc64 idle slowreader",
		"sessions10k,idle":                "sessions10k idle",
		"all,streams100k,sessions10k":     "bulk1 bulk16 bulk256 rpc rpc64 idle slowreader streams100k sessions10k",
		"Streams100K, streams100k ,rpc64": "streams100k rpc64",
		"rpc,all":                         "rpc bulk1 bulk16 bulk256 rpc64 idle slowreader",
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

// TestMarkdown checks the table of a small run.
func TestMarkdown(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"-quick", "-workloads", "bulk1,rpc", "-libs", "yamux"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d\n%s", code, errOut.String())
	}
	table := out.String()
	for _, want := range []string{"| library | bulk1 MB/s | allocs/MiB | rpc op/s |", "| raw TCP |", "| **polymux-yamux** |", "| hashicorp/yamux |", "| libp2p/go-yamux |"} {
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
