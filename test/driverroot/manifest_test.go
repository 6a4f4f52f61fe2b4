package driverroot

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/test/testutil"
)

var update = flag.Bool("update", false, "record the manifests from the fixtures (make fixtures)")

func encode(m manifest) []byte {
	var b bytes.Buffer
	b.WriteString("# recorded from test/driverroot/build.sh's root by go test ./test/driverroot -update; see package doc\n")
	for _, e := range m {
		b.WriteString(e.line())
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// TestManifestsMatchFixtures: each manifest is what the fixture holds now (or is
// rewritten from it under -update), and reads back to the same entries.
func TestManifestsMatchFixtures(t *testing.T) {
	for _, name := range Names {
		t.Run(name, func(t *testing.T) {
			p := requireFixture(t, name)
			m, err := record(p)
			if err != nil {
				t.Fatal(err)
			}
			data := encode(m)
			back, err := parseManifest(data)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(encode(back), data) {
				t.Fatal("the manifest does not read back to itself")
			}
			testutil.Golden(t, manifestPath(name), data, *update)
		})
	}
}

// requireFixture is the fixture's path; without it the test is skipped (failed under
// make test).
func requireFixture(t *testing.T, name string) string {
	t.Helper()
	p, ok := fixture(name)
	if !ok {
		if os.Getenv(testutil.EnvRequireFixtures) == "1" {
			t.Fatalf("driver root %s is missing: run make fixtures", name)
		}
		t.Skipf("driver root %s is missing: run make fixtures", name)
	}
	return p
}

// inventoryJSON discovers a root and renders the inventory with the root's path replaced.
func inventoryJSON(t *testing.T, r Root) string {
	t.Helper()
	d, err := gpu.New(r.Options()...)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.MarshalIndent(inv, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(string(data), r.Path, "/ROOT")
}

// TestSyntheticMatchesFixture: discovery finds the same inventory (driver, GPUs, nodes,
// every file with its SONAME, class, links and capabilities, warnings) in each
// synthetic root as in its fixture.
func TestSyntheticMatchesFixture(t *testing.T) {
	for _, name := range Names {
		t.Run(name, func(t *testing.T) {
			p := requireFixture(t, name)
			real := inventoryJSON(t, Root{Path: p})
			synth := inventoryJSON(t, Synthetic(t, name))
			if real != synth {
				t.Errorf("inventories differ\nfixture:\n%s\nsynthetic:\n%s", real, synth)
			}
		})
	}
}

// TestSyntheticRootsDiscover runs everywhere: each synthetic root gives a driver, GPUs
// and the libraries of its branch.
func TestSyntheticRootsDiscover(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, version string
		gpus, libs    int
	}{{"debian-535", "535.261.03", 2, 30}, {"debian-535-upgrade", "535.309.01", 2, 25}, {"flat-535", "535.261.03", 2, 25}, {"lib64-470", "470.256.02", 1, 20}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := Synthetic(t, tc.name)
			d, err := gpu.New(r.Options()...)
			if err != nil {
				t.Fatal(err)
			}
			inv, err := d.Discover(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			libs := 0
			for _, f := range inv.Files {
				if f.Kind == gpu.KindLibrary {
					libs++
				}
			}
			if inv.Driver.Version != tc.version || len(inv.Devices) != tc.gpus || libs < tc.libs || len(inv.Warnings) > 0 {
				t.Errorf("driver %s, %d GPUs, %d libraries, warnings %v", inv.Driver.Version, len(inv.Devices), libs, inv.Warnings)
			}
		})
	}
}
