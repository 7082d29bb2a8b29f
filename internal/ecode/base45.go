package ecode

import "errors"

// Base45 (RFC 9285): two bytes become three characters of the QR code's
// alphanumeric set, a trailing single byte becomes two characters.

const base45Alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"

var base45Index = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	for i := 0; i < len(base45Alphabet); i++ {
		t[base45Alphabet[i]] = int8(i)
	}
	return t
}()

var errBase45 = errors.New("invalid base45")

// EncodeBase45 encodes src as Base45 (RFC 9285).
func EncodeBase45(src []byte) string {
	out := make([]byte, 0, len(src)/2*3+2)
	i := 0
	for ; i+1 < len(src); i += 2 {
		n := int(src[i])<<8 | int(src[i+1])
		out = append(out, base45Alphabet[n%45], base45Alphabet[n/45%45], base45Alphabet[n/2025])
	}
	if i < len(src) {
		n := int(src[i])
		out = append(out, base45Alphabet[n%45], base45Alphabet[n/45])
	}
	return string(out)
}

// DecodeBase45 decodes Base45 strictly: every character must be in the
// alphabet, a final group of one character is invalid, three characters must
// encode at most 65535 and a final pair at most 255 (RFC 9285 section 4.2).
func DecodeBase45(s string) ([]byte, error) {
	if len(s)%3 == 1 {
		return nil, errBase45
	}
	out := make([]byte, 0, len(s)/3*2+1)
	i := 0
	for ; i+2 < len(s); i += 3 {
		c, d, e := base45Index[s[i]], base45Index[s[i+1]], base45Index[s[i+2]]
		if c < 0 || d < 0 || e < 0 {
			return nil, errBase45
		}
		n := int(c) + int(d)*45 + int(e)*2025
		if n > 0xffff {
			return nil, errBase45
		}
		out = append(out, byte(n>>8), byte(n))
	}
	if i < len(s) { // exactly two characters remain
		c, d := base45Index[s[i]], base45Index[s[i+1]]
		if c < 0 || d < 0 {
			return nil, errBase45
		}
		n := int(c) + int(d)*45
		if n > 0xff {
			return nil, errBase45
		}
		out = append(out, byte(n))
	}
	return out, nil
}
