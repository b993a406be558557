//go:build race

package interop

// raceEnabled: the race detector slows the data path several times over,
// so the tests move less data under it.
const raceEnabled = true
