//go:build !race

package polymux

// raceEnabled reports whether the tests run under the race detector, which
// makes everything several times slower: the heavy tests scale down.
const raceEnabled = false
