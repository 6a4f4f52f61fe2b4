// Package version compares dotted version numbers (driver 535.261.03, CUDA 12.2,
// compute capability 8.0, cdiVersion 0.5.0).
package version

import (
	"fmt"
	"strconv"
	"strings"
)

// Parse splits a dotted version into numbers; at most 4 parts, each a decimal number.
func Parse(v string) ([]int, error) {
	parts := strings.Split(v, ".")
	if len(parts) > 4 {
		return nil, fmt.Errorf("version %q has more than 4 parts", v)
	}
	out := make([]int, 0, len(parts))
	for _, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 1<<20 || strings.HasPrefix(p, "+") {
			return nil, fmt.Errorf("version %q: %q is not a number", v, p)
		}
		out = append(out, n)
	}
	return out, nil
}

// Compare returns -1, 0 or 1; missing parts count as 0 (12.2 = 12.2.0).
func Compare(a, b []int) int {
	for i := 0; i < len(a) || i < len(b); i++ {
		var x, y int
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

// Less reports whether dotted version a is below b; unparsable versions are never less.
func Less(a, b string) bool {
	x, err1 := Parse(a)
	y, err2 := Parse(b)
	return err1 == nil && err2 == nil && Compare(x, y) < 0
}
