package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/nvbind/nvbind/layout"
)

// TestMain fails the package if a test built driver layouts in the host's own folder
// (layout.DefaultBase): every test names its own with --layout-dir, or the host's /run
// keeps mounts of the test's driver roots.
func TestMain(m *testing.M) {
	_, err := os.Stat(layout.DefaultBase)
	had := err == nil
	code := m.Run()
	if _, err := os.Stat(layout.DefaultBase); err == nil && !had {
		fmt.Fprintf(os.Stderr, "a test made %s: name a per-test --layout-dir (testLayouts)\n", layout.DefaultBase)
		if _, err := layout.Collect(layout.DefaultBase, nil); err != nil {
			fmt.Fprintf(os.Stderr, "detach: %v\n", err)
		}
		code = 1
	}
	os.Exit(code)
}
