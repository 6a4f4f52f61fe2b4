package spec

import (
	"regexp"
	"testing"

	"github.com/nvbind/nvbind/gpu"
)

// nameGrammar is IsName's grammar written as a regular expression, the reference the
// hand-written matcher is checked against.
var nameGrammar = regexp.MustCompile(`^(?:igpu|[0-9]{1,4}|gpu[0-9]{1,4}|[0-9]{1,4}:[0-9]{1,4}|mig[0-9]{1,4}:[0-9]{1,4}|(?:GPU|MIG)-[0-9A-Za-z][0-9A-Za-z/_.-]{0,127})$`)

func TestNamesAreNames(t *testing.T) {
	t.Parallel()
	d := gpu.Device{Index: 3, UUID: "GPU-4c2a7a2f-6f2e-31d7-7a5c-0c7b2a1e9d01"}
	m := gpu.MIGDevice{Parent: 3, Index: 12, UUID: "MIG-8b9d3c4e-1a2b-4c5d-8e9f-a0b1c2d3e4f5"}
	all := []NameStrategy{NameIndex, NameTypeIndex, NameUUID}
	got := append(Names(d, nil, all), Names(d, &m, all)...)
	want := []string{"3", "gpu3", d.UUID, "3:12", "mig3:12", m.UUID}
	if len(got) != len(want) {
		t.Fatalf("names %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] || !IsName(got[i]) {
			t.Errorf("name %q (IsName %v), want %q", got[i], IsName(got[i]), want[i])
		}
	}
	if n := Names(gpu.Device{Index: 1}, nil, all); len(n) != 2 {
		t.Errorf("a GPU without UUID is named %v", n)
	}
	for _, bad := range []string{"", "gpu", "gpu12345", "12345", "1:", ":1", "mig1", "GPU-", "GPU--x", "GPU-a b", "all", "none", "0,1", " 0"} {
		if IsName(bad) {
			t.Errorf("IsName(%q) = true", bad)
		}
	}
}

func FuzzIsName(f *testing.F) {
	for _, s := range []string{"0", "gpu1", "1:2", "mig0:1", "GPU-abc", "MIG-a/b_c.d-e", "9999", "10000", "gpu", "GPU-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if IsName(s) != nameGrammar.MatchString(s) {
			t.Fatalf("IsName(%q) = %v, grammar says %v", s, IsName(s), !IsName(s))
		}
	})
}
