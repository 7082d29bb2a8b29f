package main

import (
	"io"
	"strings"
	"unicode"

	"golang.org/x/text/width"
)

// displayWidth is the number of terminal columns s takes: East Asian wide
// and fullwidth characters (汉字, fullwidth forms) two, combining marks,
// format characters and other zero-width ones none, every other
// character one. (text/tabwriter counts characters, so a Chinese display
// name pushes the columns after it out of line.)
func displayWidth(s string) int {
	n := 0
	for _, r := range s {
		switch {
		case unicode.In(r, unicode.Mn, unicode.Me, unicode.Cf):
		default:
			switch width.LookupRune(r).Kind() {
			case width.EastAsianWide, width.EastAsianFullwidth:
				n += 2
			default:
				n++
			}
		}
	}
	return n
}

// writeTable writes rows as columns padded by display width to their
// widest cell, two spaces apart (the last column unpadded). Control
// characters in a cell (a tab or newline in a display name) become
// spaces, so a cell cannot break the table.
func writeTable(w io.Writer, rows [][]string) error {
	clean := func(s string) string {
		return strings.Map(func(r rune) rune {
			if unicode.IsControl(r) {
				return ' '
			}
			return r
		}, s)
	}
	var widths []int
	for _, row := range rows {
		for i, c := range row {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], displayWidth(clean(c)))
		}
	}
	var b strings.Builder
	for _, row := range rows {
		for i, c := range row {
			c = clean(c)
			b.WriteString(c)
			if i < len(row)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-displayWidth(c)+2))
			}
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}
