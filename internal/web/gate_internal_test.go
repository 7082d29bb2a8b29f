package web

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"strings"
	"testing"

	qrcode "github.com/skip2/go-qrcode"

	"github.com/yikatong/yikatong/internal/apperr"
)

// A photo of a QR code decodes; a small file that declares a huge picture
// (a decompression bomb) is refused before it is decoded.
func TestDecodeQRBoundsThePicture(t *testing.T) {
	good, err := qrcode.Encode("YK1:HELLO", qrcode.Medium, 256)
	if err != nil {
		t.Fatal(err)
	}
	if text, err := decodeQR(bytes.NewReader(good)); err != nil || text != "YK1:HELLO" {
		t.Fatalf("QR photo: %q %v", text, err)
	}

	// 5000×4000 grey zeros: some KB of PNG, over the 16 megapixels. (At
	// 20000×20000 the same few hundred KB decode to 400 MB.)
	var bomb bytes.Buffer
	enc := png.Encoder{CompressionLevel: png.BestCompression}
	if err := enc.Encode(&bomb, &lazyGray{image.Rect(0, 0, 5000, 4000)}); err != nil {
		t.Fatal(err)
	}
	if bomb.Len() > maxPhotoBytes {
		t.Fatalf("the test picture is %d bytes, over the upload limit", bomb.Len())
	}
	_, err = decodeQR(bytes.NewReader(bomb.Bytes()))
	if apperr.CodeOf(err) != apperr.Malformed || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("bomb: %v", err)
	}

	if _, err := decodeQR(strings.NewReader("not a picture")); apperr.CodeOf(err) != apperr.Malformed {
		t.Fatalf("text: %v", err)
	}
}

// lazyGray is an all-black grey image that holds no pixels.
type lazyGray struct{ r image.Rectangle }

func (g *lazyGray) ColorModel() color.Model { return color.GrayModel }
func (g *lazyGray) Bounds() image.Rectangle { return g.r }
func (g *lazyGray) At(x, y int) color.Color { return color.Gray{} }
