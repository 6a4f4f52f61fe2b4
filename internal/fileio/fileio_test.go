package fileio

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestWriteAtomic(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dst := filepath.Join(dir, "sub", "f.yaml")
	if err := WriteAtomic(dst, []byte("one\n"), 0o640, nil); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dst); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("%v %v", fi, err)
	}
	var seen string
	refuse := errors.New("refused")
	err := WriteAtomic(dst, []byte("two\n"), 0o644, func(tmp string) error {
		seen = tmp
		// beside dst, and not named as what the folder's readers read (CDI: .yaml, .json)
		if filepath.Ext(tmp) != ".tmp" || filepath.Dir(tmp) != filepath.Dir(dst) {
			t.Errorf("temp file %s", tmp)
		}
		return refuse
	})
	if !errors.Is(err, refuse) {
		t.Fatalf("err = %v", err)
	}
	if data, _ := os.ReadFile(dst); string(data) != "one\n" {
		t.Fatalf("a refused write changed the file: %q", data)
	}
	if _, err := os.Stat(seen); !os.IsNotExist(err) {
		t.Fatal("the temp file was left behind")
	}
}

func TestReadAll(t *testing.T) {
	t.Parallel()
	if d, err := ReadAll(strings.NewReader("12345"), 5, "x"); err != nil || string(d) != "12345" {
		t.Fatalf("%q %v", d, err)
	}
	if _, err := ReadAll(strings.NewReader("123456"), 5, "x"); err == nil || !strings.Contains(err.Error(), "x is larger than 5 bytes") {
		t.Fatalf("err = %v", err)
	}
}

// TestOpenAndReadDir: Open reads as os.Open does, close-on-exec, and fails as it does;
// ReadDir lists as os.ReadDir does, sorted.
func TestOpenAndReadDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, n := range []string{"b", "a", "c.yaml", "A"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(n), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("a", filepath.Join(dir, "l")); err != nil {
		t.Fatal(err)
	}
	got, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Name() != want[i].Name() || got[i].Type() != want[i].Type() {
			t.Errorf("entry %d: %s %v, want %s %v", i, got[i].Name(), got[i].Type(), want[i].Name(), want[i].Type())
		}
	}

	f, err := Open(filepath.Join(dir, "c.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("not close-on-exec: %#x %v", flags, err)
	}
	data, err := ReadAll(f, 100, f.Name())
	if err != nil || string(data) != "c.yaml" {
		t.Errorf("read %q, %v", data, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(dir, "none"), filepath.Join(dir, "a", "x")} {
		_, err := Open(p)
		_, oerr := os.Open(p)
		var pe *fs.PathError
		if !errors.As(err, &pe) || pe.Path != p || !errors.Is(err, errors.Unwrap(oerr)) {
			t.Errorf("Open(%s): %v, os.Open: %v", p, err, oerr)
		}
	}
	if _, err := ReadDir(filepath.Join(dir, "none")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadDir of a missing folder: %v", err)
	}
}
