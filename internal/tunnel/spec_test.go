package tunnel

import "testing"

func TestParseForwardReadsSSHNotation(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Forward
	}{
		{"8080:example.com:80", Forward{"127.0.0.1:8080", "example.com:80"}},
		{"0.0.0.0:8080:10.0.0.1:22", Forward{"0.0.0.0:8080", "10.0.0.1:22"}},
		{"*:8080:db:5432", Forward{":8080", "db:5432"}},
		{":8080:db:5432", Forward{":8080", "db:5432"}},
		{"[::1]:8080:[2001:db8::1]:443", Forward{"[::1]:8080", "[2001:db8::1]:443"}},
		{"0:localhost:80", Forward{"127.0.0.1:0", "localhost:80"}},
		{"localhost:9000:localhost:9001", Forward{"localhost:9000", "localhost:9001"}},
	} {
		got, err := ParseForward(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseForward(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseForwardRejectsMalformedSpecs(t *testing.T) {
	for _, in := range []string{
		"", "8080", "8080:host", "a:b:c:d:e", "x:host:80", "8080:host:x", "8080:host:0",
		"70000:host:80", "8080::80", "[::1:8080:h:80", "::1:8080:h:80", "8080:host:-1",
	} {
		if f, err := ParseForward(in); err == nil {
			t.Errorf("ParseForward(%q) = %+v, want an error", in, f)
		}
	}
}

func TestParseSocksReadsBindAndPort(t *testing.T) {
	for in, want := range map[string]string{
		"1080":         "127.0.0.1:1080",
		"0.0.0.0:1080": "0.0.0.0:1080",
		"[::1]:1080":   "[::1]:1080",
		"*:1080":       ":1080",
		"localhost:0":  "localhost:0",
	} {
		if got, err := ParseSocks(in); err != nil || got != want {
			t.Errorf("ParseSocks(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "1:2:3", "99999", "[::1]"} {
		if got, err := ParseSocks(in); err == nil {
			t.Errorf("ParseSocks(%q) = %q, want an error", in, got)
		}
	}
}
