package testutil

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Markers of a victim tree: text that appears only in its files, so finding it anywhere
// a container or a hook can write means a host file was read.
const (
	// SecretKey starts the secret line of a victim's files.
	SecretKey = "NVBIND_SECRET"
	// HostLibraryStem begins the name of the library in a victim's lib folder.
	HostLibraryStem = "libnvbindhostvictim"
	// HostLibrary is the SONAME (and file name) of the library in a victim's lib folder.
	HostLibrary = HostLibraryStem + ".so.1"
)

// Victim is a root-only host tree that a hostile image points at from outside its root:
// only a root process (a hook) could read it.
//
//	Dir/           0700
//	  secret.conf  0600  "# NVBIND_SECRET=<hex>" and ld.so.conf lines naming Lib
//	  lib/         0700  HostLibrary, and libcuda.so.999.99 (a CUDA compat library's name)
//	  etc/         0700  ld.so.cache, ld.so.conf and ld.so.conf.d/a.conf, each the secret.conf
type Victim struct {
	Dir        string
	Secret     string // the random hex value of SecretKey
	SecretFile string
	Lib        string
	Etc        string
}

// NewVictim makes a victim tree at dir, copying lib (a shared library whose SONAME is
// HostLibrary) into its lib folder.
func NewVictim(t testing.TB, dir, lib string) *Victim {
	t.Helper()
	var b [16]byte
	_, _ = rand.Read(b[:])
	v := &Victim{Dir: dir, Secret: hex.EncodeToString(b[:]), SecretFile: filepath.Join(dir, "secret.conf"),
		Lib: filepath.Join(dir, "lib"), Etc: filepath.Join(dir, "etc")}
	conf := fmt.Sprintf("# %s=%s\n/proc/1/root%s\n%s\n", SecretKey, v.Secret, v.Lib, v.Lib)
	data, err := os.ReadFile(lib)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, v.Lib, v.Etc, filepath.Join(v.Etc, "ld.so.conf.d")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for p, c := range map[string][]byte{
		v.SecretFile:                                []byte(conf),
		filepath.Join(v.Lib, HostLibrary):           data,
		filepath.Join(v.Lib, "libcuda.so.999.99"):   data,
		filepath.Join(v.Etc, "ld.so.cache"):         []byte(conf),
		filepath.Join(v.Etc, "ld.so.conf"):          []byte(conf),
		filepath.Join(v.Etc, "ld.so.conf.d/a.conf"): []byte(conf),
	} {
		if err := os.WriteFile(p, c, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

// Leaks returns the victim's markers found in text: its secret, its key and the host
// library's name.
func (v *Victim) Leaks(text string) []string {
	var out []string
	for _, m := range []string{v.Secret, SecretKey, HostLibraryStem} {
		if strings.Contains(text, m) {
			out = append(out, m)
		}
	}
	return out
}

// Snapshot describes every entry of the tree: name, type and mode, owner, size, times of
// change and the contents' hash (a link's target). Two snapshots differ when anything in
// the tree was created, removed, written or had its metadata changed.
func (v *Victim) Snapshot(t testing.TB) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(v.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		desc := fmt.Sprintf("mode=%o uid=%d gid=%d size=%d mtime=%d.%d ctime=%d.%d", st.Mode, st.Uid, st.Gid, st.Size,
			st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " link=" + target
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" sha256=%x", sha256.Sum256(data))
		}
		out[p] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// SnapshotDiff lists the entries that differ between two snapshots.
func SnapshotDiff(before, after map[string]string) []string {
	var out []string
	for p, b := range before {
		if a, ok := after[p]; !ok {
			out = append(out, "removed "+p)
		} else if a != b {
			out = append(out, fmt.Sprintf("changed %s: %s -> %s", p, b, a))
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			out = append(out, "created "+p)
		}
	}
	slices.Sort(out)
	return out
}

// FSWatch records, with inotify, what any process on the host does to watched files and
// folders, whatever its mount namespace or its path to them: opens, reads, listings,
// writes and changes of metadata.
type FSWatch struct {
	fd    int
	paths map[int32]string
}

// Watched events. Closes are left out: a file the test itself opened and closed can be
// closed for the last time later, when a child process that a concurrent fork gave a
// copy of its descriptor execs, and that close comes with no open.
const (
	// AccessEvents are the events of a file being opened, read or written.
	AccessEvents = unix.IN_OPEN | unix.IN_ACCESS | unix.IN_MODIFY
	// AllEvents adds changes of names and metadata.
	AllEvents = unix.IN_ALL_EVENTS &^ (unix.IN_CLOSE_WRITE | unix.IN_CLOSE_NOWRITE)
)

// NewFSWatch starts an empty watch, closed when the test ends.
func NewFSWatch(t testing.TB) *FSWatch {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	return &FSWatch{fd: fd, paths: map[int32]string{}}
}

// Add watches one file, FIFO, device node or folder (a link itself, never its target)
// for the events of mask.
func (w *FSWatch) Add(t testing.TB, p string, mask uint32) {
	t.Helper()
	wd, err := unix.InotifyAddWatch(w.fd, p, mask|unix.IN_DONT_FOLLOW)
	if err != nil {
		t.Fatalf("watch %s: %v", p, err)
	}
	w.paths[int32(wd)] = p
}

// AddTree watches every folder and file under dir for AllEvents.
func (w *FSWatch) AddTree(t testing.TB, dir string) {
	t.Helper()
	// list first, watch after: listing a watched folder is an event
	var paths []string
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		w.Add(t, p, AllEvents)
	}
}

// Events returns the events recorded since the last call, one "path[/name]: EVENT" each.
func (w *FSWatch) Events(t testing.TB) []string {
	t.Helper()
	var out []string
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(w.fd, buf)
		if errors.Is(err, unix.EAGAIN) || n <= 0 {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := ""
			if ev.Len > 0 {
				raw := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
				name = "/" + string(bytes.TrimRight(raw, "\x00"))
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if ev.Mask&unix.IN_IGNORED != 0 {
				continue
			}
			out = append(out, fmt.Sprintf("%s%s: %s", w.paths[ev.Wd], name, eventNames(ev.Mask)))
		}
	}
}

func eventNames(mask uint32) string {
	var names []string
	for _, e := range []struct {
		bit  uint32
		name string
	}{{unix.IN_OPEN, "OPEN"}, {unix.IN_ACCESS, "ACCESS"}, {unix.IN_MODIFY, "MODIFY"}, {unix.IN_ATTRIB, "ATTRIB"},
		{unix.IN_CLOSE_WRITE, "CLOSE_WRITE"}, {unix.IN_CLOSE_NOWRITE, "CLOSE_NOWRITE"}, {unix.IN_CREATE, "CREATE"},
		{unix.IN_DELETE, "DELETE"}, {unix.IN_DELETE_SELF, "DELETE_SELF"}, {unix.IN_MOVED_FROM, "MOVED_FROM"},
		{unix.IN_MOVED_TO, "MOVED_TO"}, {unix.IN_MOVE_SELF, "MOVE_SELF"}, {unix.IN_Q_OVERFLOW, "QUEUE_OVERFLOW"},
		{unix.IN_ISDIR, "(folder)"}} {
		if mask&e.bit != 0 {
			names = append(names, e.name)
		}
	}
	return strings.Join(names, "|")
}

// BrokenLibraries returns files named like shared libraries whose ELF headers lie, made
// from good (a small 64-bit library): program-header entries too small for the class,
// truncated headers, a dynamic segment claiming exabytes, offsets near 2^63 and 2^64, a
// SONAME address that wraps. A reader that trusts any of them panics, allocates what the
// file says or reads far past its end.
func BrokenLibraries(t testing.TB, good []byte) map[string][]byte {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(good))
	if err != nil || f.Class != elf.ELFCLASS64 {
		t.Fatalf("BrokenLibraries needs a 64-bit library: %v", err)
	}
	le := binary.LittleEndian
	phoff := le.Uint64(good[32:])
	phnum := int(le.Uint16(good[56:]))
	ph := func(typ elf.ProgType) []int {
		var out []int
		for i := range phnum {
			if elf.ProgType(le.Uint32(good[phoff+uint64(i)*56:])) == typ {
				out = append(out, int(phoff)+i*56)
			}
		}
		return out
	}
	dyn := ph(elf.PT_DYNAMIC)
	if len(dyn) != 1 {
		t.Fatalf("library has %d dynamic segments", len(dyn))
	}
	dynOff := int(le.Uint64(good[dyn[0]+8:]))
	// the file offset of a dynamic entry's value, by tag
	dynVal := func(tag elf.DynTag) int {
		for o := dynOff; o+16 <= len(good); o += 16 {
			switch elf.DynTag(le.Uint64(good[o:])) {
			case tag:
				return o + 8
			case elf.DT_NULL:
				t.Fatalf("library has no %v", tag)
			}
		}
		t.Fatalf("library has no %v", tag)
		return 0
	}
	out := map[string][]byte{}
	patch := func(name string, edit func(b []byte)) {
		b := bytes.Clone(good)
		edit(b)
		out["libnvbindbad-"+name+".so.1"] = b
	}
	for n := 32; n <= 55; n++ {
		patch("phentsize"+strconv.Itoa(n), func(b []byte) { le.PutUint16(b[54:], uint16(n)) })
	}
	patch("phentsize65535-phnum65535", func(b []byte) { le.PutUint16(b[54:], 0xffff); le.PutUint16(b[56:], 0xffff) })
	patch("class32-of-64", func(b []byte) { b[elf.EI_CLASS] = byte(elf.ELFCLASS32) })
	patch("phentsize16-class32", func(b []byte) { b[elf.EI_CLASS] = byte(elf.ELFCLASS32); le.PutUint16(b[42:], 16) })
	patch("phoff-2^63", func(b []byte) { le.PutUint64(b[32:], 1<<63-16) })
	patch("phoff-2^64", func(b []byte) { le.PutUint64(b[32:], ^uint64(0)-8) })
	patch("dynamic-size-2^62", func(b []byte) { le.PutUint64(b[dyn[0]+32:], 1<<62); le.PutUint64(b[dyn[0]+40:], 1<<62) })
	patch("dynamic-size-1MiB", func(b []byte) { le.PutUint64(b[dyn[0]+32:], 1<<20) })
	patch("dynamic-offset-2^63", func(b []byte) { le.PutUint64(b[dyn[0]+8:], 1<<63-8) })
	patch("dynamic-offset-2^64", func(b []byte) { le.PutUint64(b[dyn[0]+8:], ^uint64(0)-4) })
	patch("load-offset-2^63", func(b []byte) {
		for _, p := range ph(elf.PT_LOAD) {
			le.PutUint64(b[p+8:], 1<<63-4096)
		}
	})
	patch("load-size-2^64", func(b []byte) {
		for _, p := range ph(elf.PT_LOAD) {
			le.PutUint64(b[p+16:], 0)
			le.PutUint64(b[p+32:], ^uint64(0))
		}
	})
	patch("strtab-wraps", func(b []byte) { le.PutUint64(b[dynVal(elf.DT_STRTAB):], ^uint64(0)-2) })
	patch("soname-2^62", func(b []byte) { le.PutUint64(b[dynVal(elf.DT_SONAME):], 1<<62) })
	for _, n := range []int{4, 5, 16, 52, 63, 64, int(phoff) + 20, int(phoff) + phnum*56 - 1, dynOff + 8} {
		out["libnvbindbad-truncated"+strconv.Itoa(n)+".so.1"] = bytes.Clone(good[:n])
	}
	return out
}

// ld.so.cache layout ("glibc-ld.so.cache1.1", little-endian): a 48-byte header, 24-byte
// entries, then the strings; offsets count from the header.
const (
	cacheHeader = 48
	cacheEntry  = 24
	cacheFlags  = 0x0303 // an x86-64 libc6 library
)

func cacheFile(n int, strs []byte, key, value func(i int) int) []byte {
	le := binary.LittleEndian
	b := make([]byte, cacheHeader+n*cacheEntry, cacheHeader+n*cacheEntry+len(strs))
	copy(b, "glibc-ld.so.cache1.1")
	le.PutUint32(b[20:], uint32(n))
	le.PutUint32(b[24:], uint32(len(strs)))
	b[28] = 2 // little-endian
	base := cacheHeader + n*cacheEntry
	for i := range n {
		e := b[cacheHeader+i*cacheEntry:]
		le.PutUint32(e[0:], cacheFlags)
		le.PutUint32(e[4:], uint32(base+key(i)))
		le.PutUint32(e[8:], uint32(base+value(i)))
	}
	return append(b, strs...)
}

// SharedStringCache is an ld.so.cache of n entries whose paths are all one string of
// pathLen bytes: a file of n*24 bytes that stands for n*pathLen bytes of strings to a
// reader that copies each entry's strings.
func SharedStringCache(n, pathLen int) []byte {
	name := "libnvbindshared.so.1\x00"
	strs := []byte(name + "/" + strings.Repeat("s", pathLen-1) + "\x00")
	return cacheFile(n, strs, func(int) int { return 0 }, func(int) int { return len(name) })
}

// SuccessiveOffsetsCache is an ld.so.cache of n entries at successive offsets of one
// 255-byte name and one 4095-byte path: every entry a distinct string, all in 4 KiB.
func SuccessiveOffsetsCache(n int) []byte {
	name := strings.Repeat("n", 255) + "\x00"
	strs := []byte(name + "/" + strings.Repeat("p", 4094) + "\x00")
	return cacheFile(n, strs, func(i int) int { return i % 255 }, func(i int) int { return len(name) + i%4095 })
}

// measureSource runs a command as a grandchild and reports the command's own rusage.
// A child that Go starts is a vfork that execs in the parent's memory, and the kernel
// folds the parent's peak RSS into that child's ru_maxrss at exec: the rusage of
// exec.Cmd says how large the test process was, not the command. A fork from this small
// program starts the command with this program's few pages instead.
const measureSource = `#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
	if (argc < 2) return 2;
	pid_t pid = fork();
	if (pid < 0) return 2;
	if (pid == 0) {
		if (unshare(CLONE_NEWNS) || mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL)) { perror("mount namespace"); _exit(126); }
		execv(argv[1], argv + 1);
		perror("exec");
		_exit(127);
	}
	int status;
	struct rusage ru;
	if (wait4(pid, &status, 0, &ru) < 0) return 2;
	dprintf(3, "%ld\n", ru.ru_maxrss);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
`

// Measured runs programs in a private mount namespace and reports their peak memory.
type Measured struct{ bin string }

// NewMeasured builds the measuring launcher in dir (it needs a C compiler).
func NewMeasured(t testing.TB, dir string) *Measured {
	t.Helper()
	src := filepath.Join(dir, "measure.c")
	bin := filepath.Join(dir, "measure")
	if err := os.WriteFile(src, []byte(measureSource), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cc", "-O2", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("cc measure: %v\n%s", err, out)
	}
	return &Measured{bin: bin}
}

// Run runs argv (argv[0] an absolute path) with stdin and an empty environment but PATH,
// in a private mount namespace, and returns its combined output, its peak RSS in KiB and
// its wall time.
func (m *Measured) Run(argv []string, stdin string) (out string, maxRSSKiB int64, wall time.Duration, err error) {
	r, w, err := os.Pipe()
	if err != nil {
		return "", 0, 0, err
	}
	defer func() { _ = r.Close() }()
	cmd := exec.Command(m.bin, argv...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	cmd.ExtraFiles = []*os.File{w}
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	start := time.Now()
	err = cmd.Run()
	wall = time.Since(start)
	_ = w.Close()
	line := make([]byte, 64)
	n, _ := r.Read(line)
	maxRSSKiB, perr := strconv.ParseInt(strings.TrimSpace(string(line[:n])), 10, 64)
	if err == nil && perr != nil {
		err = fmt.Errorf("read the launcher's rusage: %w", perr)
	}
	return buf.String(), maxRSSKiB, wall, err
}
