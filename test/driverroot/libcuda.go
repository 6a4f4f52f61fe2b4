package driverroot

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// compileLibcuda builds a libcuda stand-in that the dynamic loader can load: its SONAME,
// its strings in .rodata, and a cuDriverGetVersion that answers e.CUDADriverVersion,
// which is all discovery asks of it, and the real one's needed libraries (the system's
// own, linked by name, so that they are in its dynamic section as in the real one).
func compileLibcuda(dst string, e ELF) error {
	var src strings.Builder
	fmt.Fprintf(&src, "int cuDriverGetVersion(int *v) { *v = %d; return 0; }\n", e.CUDADriverVersion)
	for i, s := range e.Strings {
		fmt.Fprintf(&src, "__attribute__((used)) const char nvbind_string%d[] = %s;\n", i, strconv.Quote(s))
	}
	dir, err := os.MkdirTemp("", "nvbind-libcuda-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	c := filepath.Join(dir, "libcuda.c")
	if err := os.WriteFile(c, []byte(src.String()), 0o600); err != nil {
		return err
	}
	args := []string{"-shared", "-fPIC", "-nostdlib", "-O0", "-o", dst, c}
	if e.SONAME != "" {
		args = append(args, "-Wl,-soname,"+e.SONAME)
	}
	args = append(args, "-Wl,--no-as-needed")
	for _, n := range e.Needed {
		args = append(args, "-l:"+n)
	}
	if out, err := exec.Command("cc", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("cc %v: %w\n%s", args, err, out)
	}
	return nil
}
