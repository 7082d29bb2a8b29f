package store

// Multi-row statements are prepared once per size class — powers of two —
// so a batch of n rows runs as a few cached statements (37 = 32 + 4 + 1)
// instead of a fresh statement text per batch size.

// SizeClass is the smallest power of two ≥ n.
func SizeClass(n int) int {
	c := 1
	for c < n {
		c <<= 1
	}
	return c
}

// FloorSizeClass is the largest power of two ≤ n, at most max.
func FloorSizeClass(n, max int) int {
	c := 1
	for c*2 <= n && c*2 <= max {
		c <<= 1
	}
	return c
}
