package version

import "testing"

func TestCompare(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"535.261.03", "535.309.01", -1}, {"12.2", "12.2.0", 0}, {"8.0", "7.5", 1}, {"550.54.15", "535.261.03", 1}, {"0.6.0", "0.5.0", 1},
	} {
		a, err := Parse(tc.a)
		if err != nil {
			t.Fatal(err)
		}
		b, err := Parse(tc.b)
		if err != nil {
			t.Fatal(err)
		}
		if got := Compare(a, b); got != tc.want {
			t.Errorf("Compare(%s, %s) = %d", tc.a, tc.b, got)
		}
	}
	for _, bad := range []string{"", "1.x", "1..2", "1.2.3.4.5", "-1", "+1"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("535.261.03")
	f.Add("12.2")
	f.Fuzz(func(t *testing.T, s string) {
		v, err := Parse(s)
		if err != nil {
			return
		}
		if Compare(v, v) != 0 || len(v) == 0 || len(v) > 4 {
			t.Fatalf("%q -> %v", s, v)
		}
	})
}
