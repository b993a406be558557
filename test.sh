#!/usr/bin/env bash
# Runs every check and every test of every module: formatting, vet,
# staticcheck, and the test suites under the race detector.
set -euo pipefail
cd "$(dirname "$0")"

staticcheck_version=v0.8.2

modules=(.)
[ -f interop/go.mod ] && modules+=(interop)
[ -f libp2p/go.mod ] && modules+=(libp2p)

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

for m in "${modules[@]}"; do
	echo "== $m: go vet"
	(cd "$m" && go vet ./...)
	echo "== $m: staticcheck"
	(cd "$m" && go run "honnef.co/go/tools/cmd/staticcheck@$staticcheck_version" ./...)
	echo "== $m: go test -race"
	(cd "$m" && go test -race -count=1 -timeout 20m ./...)
done
