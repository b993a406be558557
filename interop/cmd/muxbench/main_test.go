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
	for _, args := range [][]string{{"-workloads", "nope"}, {"-libs", "nope"}, {"-reps", "0"}, {"extra"}} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}
