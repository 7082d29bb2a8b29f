package web

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"math/big"
	"testing"
)

// Every e-code the resident page draws is read back by the gate's
// decoder: the page's image has modules of one size, and a clean picture
// is read whole if the photo search misses it. Before, about one code in
// fifty was not found in the page's own image ("no QR code in the
// picture"), a flaky browser test and a resident turned away.
func TestResidentQRImagesAreReadBack(t *testing.T) {
	for i := range 300 {
		n, _ := rand.Int(rand.Reader, big.NewInt(80))
		b := make([]byte, 130+n.Int64()) // codes of 180-280 characters: QR versions 9-11
		rand.Read(b)
		code := "YK1:" + base64.RawURLEncoding.EncodeToString(b)
		png, err := qrPNG(code)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeQR(bytes.NewReader(png))
		if err != nil || got != code {
			t.Fatalf("code %d (%d characters) not read back from its image: %v", i, len(code), err)
		}
	}
}
