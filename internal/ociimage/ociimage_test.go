package ociimage_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nvbind/nvbind/internal/ociimage"
	"github.com/nvbind/nvbind/test/driverroot"
	"github.com/nvbind/nvbind/test/testutil"
)

// TestRootfsCarriesEveryNeededObject lays out an image for a dynamically linked host
// program and checks that the loader and every DT_NEEDED entry, transitively, are in it.
func TestRootfsCarriesEveryNeededObject(t *testing.T) {
	t.Parallel()
	bin := testutil.RequiresCommand(t, "ls")
	dst := t.TempDir()
	files, err := ociimage.Rootfs{
		Binaries: []string{bin}, Needs: []string{"libm.so.6"},
		LibDirs: []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"}, LibDir: "/lib/x86_64-linux-gnu",
		Dirs: []string{"var/run/nri"},
	}.Build(dst)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"usr/local/bin/ls", "lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libm.so.6"} {
		if !slices.Contains(files, want) {
			t.Errorf("%s missing from %v", want, files)
		}
	}
	for _, f := range files {
		needed, err := ociimage.Needed(filepath.Join(dst, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range needed {
			if !slices.Contains(files, "lib/x86_64-linux-gnu/"+n) {
				t.Errorf("%s needs %s, which the image lacks", f, n)
			}
		}
	}
	if fi, err := os.Stat(filepath.Join(dst, "var/run/nri")); err != nil || !fi.IsDir() {
		t.Errorf("mount point missing: %v", err)
	}
	if _, err := (ociimage.Rootfs{Binaries: []string{bin}, LibDirs: []string{t.TempDir()}, LibDir: "/lib"}).Build(t.TempDir()); err == nil ||
		!strings.Contains(err.Error(), "not found in") {
		t.Errorf("missing library: %v", err)
	}
}

// TestArchiveIsAValidLayout writes an archive twice and follows index → manifest →
// config → layer by digest, as a runtime's importer does.
func TestArchiveIsAValidLayout(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "usr/local/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/local/bin/tool"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("tool", filepath.Join(root, "usr/local/bin/alias")); err != nil {
		t.Fatal(err)
	}
	c := ociimage.Config{Name: "example.com/x:v1", Entrypoint: []string{"/usr/local/bin/tool"},
		Labels: map[string]string{"org.opencontainers.image.version": "v1"}, Created: time.Unix(1700000000, 0)}
	a, b := filepath.Join(t.TempDir(), "a.tar"), filepath.Join(t.TempDir(), "b.tar")
	for _, out := range []string{a, b} {
		if err := ociimage.Write(root, c, out); err != nil {
			t.Fatal(err)
		}
	}
	da, _ := os.ReadFile(a)
	db, _ := os.ReadFile(b)
	if !bytes.Equal(da, db) {
		t.Error("the same input gave two different archives")
	}
	blobs := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(da))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		blobs[h.Name] = data
	}
	blob := func(d string) []byte {
		t.Helper()
		data, ok := blobs["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")]
		sum := sha256.Sum256(data)
		if !ok || "sha256:"+hex.EncodeToString(sum[:]) != d {
			t.Fatalf("blob %s missing or corrupt", d)
		}
		return data
	}
	var index struct {
		Manifests []struct {
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(blobs["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index: %v %s", err, blobs["index.json"])
	}
	if index.Manifests[0].Annotations["io.containerd.image.name"] != "example.com/x:v1" {
		t.Errorf("index annotations %v", index.Manifests[0].Annotations)
	}
	var manifest struct {
		Config      struct{ Digest string }   `json:"config"`
		Layers      []struct{ Digest string } `json:"layers"`
		Annotations map[string]string         `json:"annotations"`
	}
	if err := json.Unmarshal(blob(index.Manifests[0].Digest), &manifest); err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Config struct {
			Entrypoint []string          `json:"Entrypoint"`
			Labels     map[string]string `json:"Labels"`
		} `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(blob(manifest.Config.Digest), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Config.Labels["org.opencontainers.image.version"] != "v1" || manifest.Annotations["org.opencontainers.image.version"] != "v1" ||
		cfg.Config.Entrypoint[0] != "/usr/local/bin/tool" || cfg.RootFS.DiffIDs[0] != manifest.Layers[0].Digest {
		t.Errorf("config %+v manifest %+v", cfg, manifest)
	}
	layer := tar.NewReader(bytes.NewReader(blob(manifest.Layers[0].Digest)))
	var names []string
	for {
		h, err := layer.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || !h.ModTime.Equal(time.Unix(1700000000, 0)) {
			t.Errorf("%s: uid %d mtime %v", h.Name, h.Uid, h.ModTime)
		}
		if h.Name == "usr/local/bin/alias" && (h.Typeflag != tar.TypeSymlink || h.Linkname != "tool") {
			t.Errorf("link kept as %+v", h)
		}
		names = append(names, h.Name)
	}
	if strings.Join(names, " ") != "usr/ usr/local/ usr/local/bin/ usr/local/bin/alias usr/local/bin/tool" {
		t.Errorf("layer = %v", names)
	}
}

// TestDriverNeedsCoverDriverLibraries checks DriverNeeds against the real libraries nvbind
// loads with dlopen, in every driver root built from Debian's packages: whatever they
// link against is in nvbind's image.
func TestDriverNeedsCoverDriverLibraries(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"debian-535", "flat-535", "lib64-470"} {
		root := driverroot.Open(t, name).Path
		n := 0
		err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.Type()&os.ModeSymlink != 0 || d.IsDir() || strings.Contains(p, "i386") || strings.Contains(p, "/lib32/") {
				return err
			}
			if b := d.Name(); !strings.HasPrefix(b, "libnvidia-ml.so.") && !strings.HasPrefix(b, "libcuda.so.") {
				return nil
			}
			needed, err := ociimage.Needed(p)
			if err != nil {
				return err
			}
			n++
			for _, lib := range needed {
				if !slices.Contains(ociimage.DriverNeeds, lib) {
					t.Errorf("%s: %s needs %s, which nvbind's image does not carry", name, p, lib)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n < 2 {
			t.Errorf("%s: found %d of libnvidia-ml and libcuda", name, n)
		}
	}
}
