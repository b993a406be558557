package wire

import "testing"

// FuzzMuxadoReadFrame feeds arbitrary bytes to the muxado decoder, as a
// hostile peer could; see checkReadLoop for what must hold.
func FuzzMuxadoReadFrame(f *testing.F) {
	addGoldenSeeds(f, muxadoGolden())
	// Frames of the other protocols are plausible garbage for muxado.
	addGoldenSeeds(f, smuxGolden(2))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkReadLoop(t, Muxado(), data)
	})
}
