package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/nvbind/nvbind/internal/fileio"
)

// Config is the image configuration that matters to nvbind's images.
type Config struct {
	// Name is the full reference the runtime stores the image under
	// (ghcr.io/nvbind/nvbind:v0.1.0); it goes into io.containerd.image.name and
	// org.opencontainers.image.ref.name.
	Name string
	// Architecture is GOARCH's name for the platform (amd64, arm64).
	Architecture string
	Entrypoint   []string
	Env          []string
	// Labels become the config's labels and the manifest's annotations.
	Labels map[string]string
	// Created is the config's creation time and every file's modification time, so that
	// the same input gives the same archive.
	Created time.Time
}

// Write writes an OCI image layout tar of one uncompressed layer holding rootfs to out,
// atomically: a failed write leaves nothing at out.
func Write(rootfs string, c Config, out string) error {
	if c.Architecture == "" {
		c.Architecture = "amd64"
	}
	if c.Created.IsZero() {
		c.Created = time.Unix(0, 0).UTC()
	}
	layer, err := tarDir(rootfs, c.Created)
	if err != nil {
		return fmt.Errorf("archive %s: %w", rootfs, err)
	}
	layerDigest := digest(layer)
	created := c.Created.UTC().Format(time.RFC3339)
	cfg, err := json.Marshal(map[string]any{
		"created": created, "architecture": c.Architecture, "os": "linux",
		"config":  map[string]any{"Entrypoint": c.Entrypoint, "Env": c.Env, "Labels": c.Labels},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
		"history": []any{map[string]any{"created": created, "created_by": "nvbind ociimage"}},
	})
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config":      map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(cfg), "size": len(cfg)},
		"layers":      []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layerDigest, "size": len(layer)}},
		"annotations": c.Labels,
	})
	if err != nil {
		return err
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(manifest), "size": len(manifest),
			"platform":    map[string]string{"architecture": c.Architecture, "os": "linux"},
			"annotations": map[string]string{"io.containerd.image.name": c.Name, "org.opencontainers.image.ref.name": c.Name},
		}},
	})
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(p string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: p, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: c.Created}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := add("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := add("index.json", index); err != nil {
		return err
	}
	for _, blob := range [][]byte{layer, cfg, manifest} {
		if err := add("blobs/sha256/"+digest(blob)[len("sha256:"):], blob); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return fileio.WriteAtomic(out, buf.Bytes(), 0o644, nil)
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// tarDir archives a folder with its links and modes, owned by root, in name order.
func tarDir(dir string, mtime time.Time) ([]byte, error) {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err == nil && p != dir {
			paths = append(paths, p)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		if err := addFile(tw, dir, p, mtime); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func addFile(tw *tar.Writer, dir, p string, mtime time.Time) error {
	rel, err := filepath.Rel(dir, p)
	if err != nil {
		return err
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	link := ""
	if fi.Mode()&fs.ModeSymlink != 0 {
		if link, err = os.Readlink(p); err != nil {
			return err
		}
	}
	h, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return err
	}
	h.Name, h.Uid, h.Gid, h.Uname, h.Gname = rel, 0, 0, "", ""
	h.Format = tar.FormatPAX
	h.ModTime, h.AccessTime, h.ChangeTime = mtime, time.Time{}, time.Time{}
	if fi.IsDir() {
		h.Name += "/"
	}
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	f, err := os.Open(p) //nolint:gosec // a file of the folder being archived
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	_, err = io.Copy(tw, f)
	return err
}
