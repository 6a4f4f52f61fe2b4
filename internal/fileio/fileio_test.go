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

// TestReplaceAtomic: the file is replaced whole, with the mode asked whatever the umask,
// and a failure leaves it and no temp file.
func TestReplaceAtomic(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dst := filepath.Join(dir, "config.json")
	if err := os.WriteFile(dst, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ReplaceAtomic(dst, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(dst); err != nil || string(data) != "new" {
		t.Fatalf("%q %v", data, err)
	}
	if fi, err := os.Stat(dst); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("%v %v", fi, err)
	}
	// a folder in dst's place: the rename fails, nothing is left
	if err := ReplaceAtomic(dir, []byte("x"), 0o644); err == nil || !strings.Contains(err.Error(), "replace") {
		t.Fatalf("err = %v", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("left behind: %v", ents)
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

// TestOpen: Open reads as os.Open does, close-on-exec, and fails as it does.
func TestOpen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(p, []byte("c.yaml"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("not close-on-exec: %#x %v", flags, err)
	}
	data, err := ReadAll(f, 100, f.Name())
	if err != nil || string(data) != "c.yaml" || f.Name() != p {
		t.Errorf("read %q from %s, %v", data, f.Name(), err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{filepath.Join(dir, "none"), filepath.Join(p, "x")} {
		_, err := Open(q)
		_, oerr := os.Open(q)
		var pe *fs.PathError
		if !errors.As(err, &pe) || pe.Op != "open" || pe.Path != q || !errors.Is(err, errors.Unwrap(oerr)) {
			t.Errorf("Open(%s): %v, os.Open: %v", q, err, oerr)
		}
	}
}

func TestHolds(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dst := filepath.Join(dir, "f.yaml")
	data := []byte("kind: a/b\n")
	holds := func(p string, data []byte, mode fs.FileMode) bool {
		t.Helper()
		ok, err := Holds(p, data, mode, nil)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		return ok
	}
	if holds(dst, data, 0o644) {
		t.Fatal("a missing file holds data")
	}
	if err := WriteAtomic(dst, data, 0o644, nil); err != nil {
		t.Fatal(err)
	}
	if !holds(dst, data, 0o644) {
		t.Fatal("the file WriteAtomic wrote does not hold its data")
	}
	for _, c := range []struct {
		name string
		data []byte
		mode fs.FileMode
	}{
		{"other bytes", []byte("kind: a/c\n"), 0o644},
		{"a prefix", data[:4], 0o644},
		{"longer", append(append([]byte{}, data...), 'x'), 0o644},
		{"other mode", data, 0o600},
		{"not only permissions", data, 0o644 | fs.ModeSetuid},
	} {
		if holds(dst, c.data, c.mode) {
			t.Errorf("%s: holds", c.name)
		}
	}
	// the check reads the file compared, through its descriptor; its error is Holds'
	var seen []byte
	refuse := errors.New("refused")
	ok, err := Holds(dst, data, 0o644, func(p string) error {
		seen, _ = os.ReadFile(p)
		if !strings.HasPrefix(p, "/proc/self/fd/") {
			t.Errorf("check got %s", p)
		}
		return refuse
	})
	if !ok || !errors.Is(err, refuse) || string(seen) != string(data) {
		t.Errorf("check: %v %v, read %q", ok, err, seen)
	}
	// a link to a file that holds data is no such file: a write would replace the link
	link := filepath.Join(dir, "link.yaml")
	if err := os.Symlink(dst, link); err != nil {
		t.Fatal(err)
	}
	if holds(link, data, 0o644) {
		t.Error("a link holds data")
	}
	// a second name of the file: a write would part them
	hard := filepath.Join(dir, "hard.yaml")
	if err := os.Link(dst, hard); err != nil {
		t.Fatal(err)
	}
	if holds(dst, data, 0o644) || holds(hard, data, 0o644) {
		t.Error("a file with two links holds data")
	}
	// a FIFO neither blocks nor holds
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if holds(fifo, nil, 0o644) {
		t.Error("a FIFO holds data")
	}
	if holds(dir, nil, 0o755) {
		t.Error("a folder holds data")
	}
	// another user's file: a write would make it this user's
	if os.Geteuid() == 0 {
		other := filepath.Join(dir, "other.yaml")
		if err := WriteAtomic(other, data, 0o644, nil); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(other, 1, 1); err != nil {
			t.Fatal(err)
		}
		if holds(other, data, 0o644) {
			t.Error("another user's file holds data")
		}
		// a device is not opened, and holds nothing (/dev/null: opening it is harmless)
		if holds("/dev/null", nil, 0o666) {
			t.Error("a device holds data")
		}
	}
	// an empty file holds empty data
	empty := filepath.Join(dir, "empty")
	if err := WriteAtomic(empty, nil, 0o644, nil); err != nil {
		t.Fatal(err)
	}
	if !holds(empty, nil, 0o644) || holds(empty, []byte("x"), 0o644) {
		t.Error("empty file")
	}
}
