package layout

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
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
//   - its file system is read-only itself (the superblock, not only a mount of it: a
//     dm-verity root as Bottlerocket's, a squashfs or erofs image as a system extension's)
//     and no other file system is mounted under it; so nothing the host does changes or
//     removes its files under a running container, as a per-file mount guarantees. A
//     folder of a writable file system, even mounted read-only, is not: a package upgrade
//     replaces its files in place (Debian's nvidia/current), a garbage collector removes a
//     store path (NixOS's /nix/store, written through another mount), and a container
//     with the folder bound would see its driver change or go.
//
// The layout's mount in a container is the same either way (one recursive mount).

// maxWholeEntries bounds the walk of a candidate folder: a driver folder holds a few
// hundred entries.
const maxWholeEntries = 4096

// wholeFolders returns the plan's driver folders that go into its layout whole: container
// folder to host folder. read maps a host path to where this process reads it.
func wholeFolders(p Plan, read func(string) string) map[string]string {
	if read == nil {
		read = func(s string) string { return s }
	}
	byFolder := map[string][]Entry{}
	for _, e := range p.Entries {
		if c := DriverFolder(e.Path, ""); c != "" {
			byFolder[c] = append(byFolder[c], e)
		}
	}
	out := map[string]string{}
	for c, entries := range byFolder {
		host, ok := hostFolder(c, entries)
		if !ok {
			continue
		}
		if immutableFolder(read(host)) && sameTree(read(host), host, c, entries) {
			out[c] = host
		}
	}
	return out
}

// hostFolder is the host folder whose files the plan's files under container folder c
// are, each at the same relative path, or false.
func hostFolder(c string, entries []Entry) (string, bool) {
	host := ""
	for _, e := range entries {
		if e.Host == "" {
			continue
		}
		rel := strings.TrimPrefix(e.Path, c+"/")
		h, ok := strings.CutSuffix(path.Clean(e.Host), "/"+rel)
		if !ok || h == "" || host != "" && h != host {
			return "", false
		}
		host = h
	}
	return host, host != ""
}

// immutableFolder reports whether folder dir is on a file system that is read-only
// itself (its superblock's options say ro).
func immutableFolder(dir string) bool {
	id, ok := mountID(dir)
	if !ok {
		return false
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
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
		_, after, ok := strings.Cut(line, " - ")
		if !ok {
			return false
		}
		f := strings.Fields(after)
		return len(f) == 3 && slices.Contains(strings.Split(f[2], ","), "ro")
	}
	return false
}

// mountID is the ID of the mount p is on.
func mountID(p string) (uint64, bool) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &st); err != nil || st.Mask&unix.STATX_MNT_ID == 0 {
		return 0, false
	}
	return st.Mnt_id, true
}

// sameTree reports whether the folder read (host folder host, as this process reads it)
// holds exactly the plan's entries under container folder c, all on its own mount.
func sameTree(read, host, c string, entries []Entry) bool {
	want := map[string]Entry{}
	for _, e := range entries {
		want[strings.TrimPrefix(e.Path, c+"/")] = e
	}
	root, ok := mountID(read)
	if !ok {
		return false
	}
	seen, walked := 0, 0
	err := filepath.WalkDir(read, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if walked++; walked > maxWholeEntries {
			return errors.New("too many entries")
		}
		if p == read {
			return nil
		}
		rel, err := filepath.Rel(read, p)
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if id, ok := mountID(p); !ok || id != root || !holdsSome(want, rel) {
				return fmt.Errorf("%s: another mount, or nothing of the plan", rel)
			}
			return nil
		case d.Type().IsRegular():
			if e, ok := want[rel]; !ok || e.Host != path.Join(host, rel) {
				return fmt.Errorf("%s: not the plan's file", rel)
			}
		case d.Type()&fs.ModeSymlink != 0:
			e, ok := want[rel]
			if !ok || e.Host != "" {
				return fmt.Errorf("%s: not the plan's link", rel)
			}
			end, ok := linkEnd(rel, want, func(r string) (string, bool) {
				t, err := os.Readlink(filepath.Join(read, r))
				return t, err == nil
			})
			planEnd, planOK := linkEnd(rel, want, func(r string) (string, bool) {
				e, ok := want[r]
				return e.Target, ok && e.Host == ""
			})
			if !ok || !planOK || end != planEnd {
				return fmt.Errorf("%s: its link ends elsewhere than the plan's", rel)
			}
		default:
			return fmt.Errorf("%s: not a file, link or folder", rel)
		}
		seen++
		return nil
	})
	return err == nil && seen == len(want)
}

// holdsSome reports whether one of the plan's entries is under folder rel.
func holdsSome(want map[string]Entry, rel string) bool {
	for r := range want {
		if strings.HasPrefix(r, rel+"/") {
			return true
		}
	}
	return false
}

// linkEnd follows link rel (relative to the folder) through links as target gives them,
// relative targets only, to the plan file it ends at, or false: one that leaves the
// folder, an absolute target, a loop, or an end that is no plan file.
func linkEnd(rel string, want map[string]Entry, target func(string) (string, bool)) (string, bool) {
	for range 8 {
		t, ok := target(rel)
		if !ok {
			e, file := want[rel]
			return rel, file && e.Host != ""
		}
		if path.IsAbs(t) {
			return "", false
		}
		rel = path.Join(path.Dir(rel), t)
		if rel == ".." || strings.HasPrefix(rel, "../") {
			return "", false
		}
	}
	return "", false
}

// bindFolder mounts folder src, read-only and alone (no mount under it), at dst (a folder
// it makes): a detached copy of its mount with the attributes set, moved into place; on
// kernels before 5.12, a bind and a read-only remount.
func bindFolder(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil { //nolint:gosec // world-readable, as the layout
		return err
	}
	sfd, err := unix.Open(src, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer func() { _ = unix.Close(sfd) }()
	return bindFD(sfd, dst)
}
