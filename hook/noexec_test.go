package hook

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestHookRunsNoProgram keeps the hook from ever running a program: no file of the
// package imports a package that starts processes, or names a call that does. The hook
// runs as root on the host against a tree the image controls; whatever it needs done it
// does with its own code.
func TestHookRunsNoProgram(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	banned := map[string]bool{"os/exec": true, "plugin": true}
	calls := []string{"syscall.Exec", "syscall.ForkExec", "unix.Exec", "os.StartProcess", "syscall.StartProcess"}
	checked := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		checked++
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, data, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if banned[p] {
				t.Errorf("%s imports %s: the hook must not run programs", f, p)
			}
		}
		for _, c := range calls {
			if strings.Contains(string(data), c+"(") {
				t.Errorf("%s calls %s: the hook must not run programs", f, c)
			}
		}
	}
	if checked < 5 {
		t.Fatalf("checked only %d files", checked)
	}
}
