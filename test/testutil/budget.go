package testutil

import (
	"runtime"
	"testing"
	"time"
)

// Budget is what a parser of request or image input may spend: perByte bytes of
// allocation per byte of input plus Fixed, and Base plus a microsecond per byte of time.
type Budget struct {
	PerByte, Fixed uint64
	Base           time.Duration
}

// WithinBudget runs f and fails when it allocates or takes more than b allows for
// inputLen bytes of input: a parser of hostile input must be linear, whatever it is sent.
func WithinBudget(t testing.TB, b Budget, inputLen int, f func()) {
	t.Helper()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	f()
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > b.PerByte*uint64(inputLen)+b.Fixed {
		t.Fatalf("%d bytes of input allocated %d bytes", inputLen, alloc)
	}
	if limit := b.Base + time.Duration(inputLen)*time.Microsecond; took > limit {
		t.Fatalf("%d bytes of input took %s (budget %s)", inputLen, took, limit)
	}
}
