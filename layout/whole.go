package layout

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A driver folder (DriverFolder: /usr/lib/x86_64-linux-gnu/nvidia, /usr/share/nvidia) is
// bound into a layout whole, one mount instead of one per file and link, where both hold:
//
//   - it holds exactly what the plan lays out there: each of its files is a plan file at
//     the same place, each of its links a plan link that ends at the same file, each of
//     its folders holds some of them, and the plan has nothing there that it lacks; so a
//     container sees the same names with either;
//   - its file system cannot be written: one that is read-only by its kind (squashfs,
//     erofs, cramfs, iso9660, as a system extension's image), or one on a block device
//     that is read-only (dm-verity, as Bottlerocket's root; a loop device set up
//     read-only); and no other mount is under it or on any of its entries. So nothing the
//     host does changes or removes its files under a running container, as a per-file
//     mount guarantees. A writable file system is not, even mounted read-only, or with its
//     superblock read-only (root may remount it writable): a package upgrade replaces its
//     files in place (Debian's nvidia/current), a garbage collector removes a store path
//     (NixOS's /nix/store, written through another mount), an overlay's lower folders may
//     be written under it, and a container with the folder bound would see its driver
//     change or go.
//
// The folder is opened once: the checks read it through that handle and the bind clones
// its mount from it, so a mount swapped onto its path meanwhile changes nothing.
// The layout's mount in a container is the same either way (one recursive mount).

// maxWholeEntries bounds the walk of a candidate folder: a driver folder holds a few
// hundred entries.
const maxWholeEntries = 4096

// A wholeFolder is a host folder to bind into a layout whole, open.
type wholeFolder struct {
	host string
	fd   int
}

// wholeFolders returns the plan's driver folders that go into its layout whole, by
// container folder, each open (closeWhole closes them), and, for each of the others, why
// it goes in one file at a time. read maps a host path to where this process reads it.
func wholeFolders(p Plan, read func(string) string) (map[string]wholeFolder, []PerFile) {
	if read == nil {
		read = func(s string) string { return s }
	}
	byFolder := map[string][]Entry{}
	for _, e := range p.Entries {
		if c := DriverFolder(e.Path, ""); c != "" {
			byFolder[c] = append(byFolder[c], e)
		}
	}
	out := map[string]wholeFolder{}
	var notes []PerFile
	for _, c := range slices.Sorted(maps.Keys(byFolder)) {
		entries := byFolder[c]
		host, err := hostFolder(c, entries)
		if err != nil {
			notes = append(notes, PerFile{Folder: c, Why: err.Error()})
			continue
		}
		fd, err := unix.Open(read(host), unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			notes = append(notes, PerFile{Folder: c, Host: host, Why: "cannot be opened as a folder: " + err.Error()})
			continue
		}
		if err := immutableFolder(fd); err != nil {
			notes = append(notes, PerFile{Folder: c, Host: host, Why: err.Error()})
			_ = unix.Close(fd)
			continue
		}
		if err := sameTree(fd, host, c, entries); err != nil {
			notes = append(notes, PerFile{Folder: c, Host: host, Why: err.Error()})
			_ = unix.Close(fd)
			continue
		}
		out[c] = wholeFolder{host: host, fd: fd}
	}
	return out, notes
}

// A PerFile is a driver folder that goes into a layout one file at a time, and why it
// does not go in whole.
type PerFile struct {
	Folder string // the container folder
	Host   string // the host folder its files come from ("" where there is none)
	Why    string
}

// closeWhole closes the folders wholeFolders opened.
func closeWhole(w map[string]wholeFolder) {
	for _, f := range w {
		_ = unix.Close(f.fd)
	}
}

// hostFolder is the host folder whose files the plan's files under container folder c
// are, each at the same relative path; or why there is none.
func hostFolder(c string, entries []Entry) (string, error) {
	host, first := "", ""
	for _, e := range entries {
		if e.Host == "" {
			continue
		}
		rel := strings.TrimPrefix(e.Path, c+"/")
		h, ok := strings.CutSuffix(path.Clean(e.Host), "/"+rel)
		switch {
		case !ok || h == "":
			return "", fmt.Errorf("%s comes from the host's %s, under another name", rel, e.Host)
		case host != "" && h != host:
			return "", fmt.Errorf("its files come from more than one host folder (%s from %s, %s from %s)", first, host, rel, h)
		}
		if host == "" {
			first = rel // the first file of the first folder, named if another differs
		}
		host = h
	}
	if host == "" {
		return "", errors.New("it holds links alone")
	}
	return host, nil
}

// immutableFiles are the file systems that cannot be written, whatever their mount.
var immutableFiles = map[string]bool{"squashfs": true, "erofs": true, "cramfs": true, "iso9660": true}

// onlyImmutable names what goes into a layout whole.
const onlyImmutable = "only squashfs, erofs, cramfs, iso9660 or a read-only block device goes in whole"

// immutableFolder says why the folder fd opens is on a file system that can be written
// (nil: it cannot be, being read-only by its kind or on a read-only block device).
func immutableFolder(fd int) error {
	id, ok := mountIDAt(fd, "")
	if !ok {
		return errors.New("its mount is unknown (statx without a mount ID)")
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("its file system is unknown: %w", err)
	}
	want := strconv.FormatUint(id, 10) + " "
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, want) {
			continue
		}
		// ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER
		f := strings.Fields(line)
		_, after, ok := strings.Cut(line, " - ")
		kind := strings.Fields(after)
		if !ok || len(f) < 3 || len(kind) == 0 {
			return errors.New("its file system is unknown (a mountinfo line without one)")
		}
		if immutableFiles[kind[0]] {
			return nil
		}
		writable := fmt.Errorf("it is on %s, which can be written; %s", kind[0], onlyImmutable)
		if kind[0] == "overlay" || kind[0] == "tmpfs" {
			return writable
		}
		// a block device's read-only flag (dm-verity sets it; a loop device set up
		// read-only has it); a file system without one (major 0) has none
		maj, minor, _ := strings.Cut(f[2], ":")
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(minor, 10, 32)
		if err1 != nil || err2 != nil || ma == 0 {
			return writable
		}
		ro, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/ro", ma, mi))
		switch {
		case err != nil:
			return fmt.Errorf("it is on %s, whose block device's read-only flag is unknown: %w; %s", kind[0], err, onlyImmutable)
		case strings.TrimSpace(string(ro)) != "1":
			return fmt.Errorf("it is on %s (block device %d:%d), which can be written; %s", kind[0], ma, mi, onlyImmutable)
		}
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("its file system is unknown: /proc/self/mountinfo: %w", err)
	}
	return fmt.Errorf("its mount %d is not in /proc/self/mountinfo", id)
}

// mountIDAt is the ID of the mount that name under folder fd is on (name "": fd's own),
// the entry itself, not what a link of it points at.
func mountIDAt(fd int, name string) (uint64, bool) {
	flags := unix.AT_SYMLINK_NOFOLLOW
	if name == "" {
		flags |= unix.AT_EMPTY_PATH
	}
	var st unix.Statx_t
	if err := unix.Statx(fd, name, flags, unix.STATX_MNT_ID, &st); err != nil || st.Mask&unix.STATX_MNT_ID == 0 {
		return 0, false
	}
	return st.Mnt_id, true
}

// sameTree says why the folder fd opens (host folder host) does not hold exactly the
// plan's entries under container folder c, with every entry on the folder's own mount,
// and every folder the builder's (root's) and world-readable, as a layout's own folders
// (nil: it does).
func sameTree(fd int, host, c string, entries []Entry) error {
	want := map[string]Entry{}
	folders := map[string]bool{} // the folders the entries are under
	for _, e := range entries {
		rel := strings.TrimPrefix(e.Path, c+"/")
		want[rel] = e
		for d := path.Dir(rel); d != "." && !folders[d]; d = path.Dir(d) {
			folders[d] = true
		}
	}
	root, ok := mountIDAt(fd, "")
	if !ok {
		return errors.New("its mount is unknown (statx without a mount ID)")
	}
	// through the handle: the folder it opened, whatever its path is now
	read := "/proc/self/fd/" + strconv.Itoa(fd) + "/"
	seen, walked := 0, 0
	err := filepath.WalkDir(read, func(p string, d fs.DirEntry, err error) error {
		rel, rerr := filepath.Rel(read, p)
		if rerr != nil {
			return rerr
		}
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		if walked++; walked > maxWholeEntries {
			return fmt.Errorf("it holds more than %d entries", maxWholeEntries)
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		switch id, ok := mountIDAt(unix.AT_FDCWD, p); {
		case !ok:
			return fmt.Errorf("%s: its mount is unknown (statx without a mount ID)", rel)
		case id != root:
			return fmt.Errorf("%s: a mount covers it", rel)
		}
		if d.IsDir() && (st.Uid != uint32(os.Geteuid()) || st.Mode&0o755 != 0o755 || st.Mode&0o022 != 0) { //nolint:gosec // a uid
			return fmt.Errorf("%s: not a folder of mode 0755 of the builder's (root)", rel)
		}
		if rel == "." {
			return nil
		}
		switch {
		case d.IsDir():
			if !folders[rel] {
				return fmt.Errorf("%s: a folder the layout has nothing in", rel)
			}
			return nil
		case d.Type().IsRegular():
			switch e, ok := want[rel]; {
			case !ok:
				return fmt.Errorf("%s: a file the layout does not hold", rel)
			case e.Host == "":
				return fmt.Errorf("%s: a file where the layout has a link", rel)
			case e.Host != path.Join(host, rel):
				return fmt.Errorf("%s: the layout has %s there", rel, e.Host)
			}
		case d.Type()&fs.ModeSymlink != 0:
			e, ok := want[rel]
			switch {
			case !ok:
				return fmt.Errorf("%s: a link the layout does not hold", rel)
			case e.Host != "":
				return fmt.Errorf("%s: a link where the layout has a file", rel)
			}
			end, ok := linkEnd(rel, want, func(r string) (string, bool) {
				t, err := os.Readlink(filepath.Join(read, r))
				return t, err == nil
			})
			planEnd, planOK := linkEnd(rel, want, func(r string) (string, bool) {
				e, ok := want[r]
				return e.Target, ok && e.Host == ""
			})
			if !ok || !planOK || end != planEnd || !sameFile(filepath.Join(read, rel), filepath.Join(read, end)) {
				return fmt.Errorf("%s: a link that ends elsewhere than the layout's", rel)
			}
		default:
			return fmt.Errorf("%s: not a file, link or folder", rel)
		}
		seen++
		return nil
	})
	if err != nil {
		return err
	}
	if seen != len(want) {
		return fmt.Errorf("it lacks %d of the layout's %d entries there", len(want)-seen, len(want))
	}
	return nil
}

// sameFile reports whether a and b (following links, as the kernel does) are one file.
func sameFile(a, b string) bool {
	var sa, sb unix.Stat_t
	return unix.Stat(a, &sa) == nil && unix.Stat(b, &sb) == nil && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// linkEnd follows link rel (relative to the folder) through links as target gives them,
// relative targets without "..", to the plan file it ends at, or false: one that leaves
// the folder or climbs out of one, an absolute target, a loop, or an end that is no plan
// file.
func linkEnd(rel string, want map[string]Entry, target func(string) (string, bool)) (string, bool) {
	for range 8 {
		t, ok := target(rel)
		if !ok {
			e, file := want[rel]
			return rel, file && e.Host != ""
		}
		if path.IsAbs(t) || slices.Contains(strings.Split(t, "/"), "..") {
			return "", false
		}
		rel = path.Join(path.Dir(rel), t)
	}
	return "", false
}

// bindFolder mounts the folder fd opens, read-only and alone (no mount under it), at dst
// (a folder it makes).
func bindFolder(fd int, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil { //nolint:gosec // world-readable, as the layout
		return err
	}
	return bindFD(fd, dst)
}
