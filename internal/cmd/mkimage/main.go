// Command mkimage builds nvbind's container image from the local build: `make image` runs
// it to write an OCI archive (for `ctr -n k8s.io images import` or `podman load`), and the
// Containerfile runs it with -rootfs-only to lay out the same files for a registry build.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/nvbind/nvbind/internal/ociimage"
)

// triplets are the Debian multiarch names of the platforms nvbind builds for.
var triplets = map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		out      = flag.String("out", "", "the OCI archive to write")
		rootfs   = flag.String("rootfs", "", "the folder to lay the image out in (default: a temp folder)")
		only     = flag.Bool("rootfs-only", false, "lay out -rootfs and write no archive (for the Containerfile)")
		name     = flag.String("name", "", "image reference, e.g. ghcr.io/nvbind/nvbind:v0.1.0")
		arch     = flag.String("arch", "amd64", "platform architecture: amd64 or arm64")
		bindir   = flag.String("bin", "bin", "folder with nvbind-node, nvbind-hook and nvbind-hook-go (make build)")
		libdirs  = flag.String("libdirs", "", "colon-separated folders to find shared objects in (default: the host's, or the cross toolchain's for another arch)")
		version  = flag.String("version", "dev", "org.opencontainers.image.version")
		revision = flag.String("revision", "", "org.opencontainers.image.revision (the git commit)")
		created  = flag.String("created", os.Getenv("SOURCE_DATE_EPOCH"), "creation time in Unix seconds (default: SOURCE_DATE_EPOCH, else now)")
	)
	flag.Parse()
	triplet, ok := triplets[*arch]
	if !ok {
		return fmt.Errorf("-arch %q: valid: amd64, arm64", *arch)
	}
	if !*only && (*out == "" || *name == "") {
		return fmt.Errorf("-out and -name are required (or -rootfs-only with -rootfs)")
	}
	dirs := []string{"/lib/" + triplet, "/usr/lib/" + triplet}
	if *arch != runtime.GOARCH {
		dirs = []string{"/usr/" + triplet + "/lib"}
	}
	if *libdirs != "" {
		dirs = strings.Split(*libdirs, ":")
	}
	when := time.Now().UTC().Truncate(time.Second)
	if *created != "" {
		s, err := strconv.ParseInt(*created, 10, 64)
		if err != nil {
			return fmt.Errorf("-created %q: want Unix seconds: %w", *created, err)
		}
		when = time.Unix(s, 0).UTC()
	}
	dst := *rootfs
	if dst == "" {
		tmp, err := os.MkdirTemp("", "nvbind-image-")
		if err != nil {
			return err
		}
		defer func() { _ = os.RemoveAll(tmp) }()
		dst = tmp
	}
	files, err := ociimage.Rootfs{
		// the full build answers every command, so nvbind is a link to it: one Go binary
		// besides the static hook (its C front and the full hook), and the runtime wrapper
		// the init container installs on the host (its static C front and its editor)
		Binaries: []string{filepath.Join(*bindir, "nvbind-node"), filepath.Join(*bindir, "nvbind-hook"), filepath.Join(*bindir, "nvbind-hook-go"),
			filepath.Join(*bindir, "nvbind-runtime"), filepath.Join(*bindir, "nvbind-runtime-edit")},
		Needs:   ociimage.DriverNeeds,
		LibDirs: dirs,
		LibDir:  "/lib/" + triplet,
		// mount points the DaemonSet uses, so a read-only root needs no new folders; the
		// host's /dev is mounted at /host/dev, and /proc and /sys, the same kernel's, are
		// the container's own: --dev-root-mount=/host reads all three
		Dirs:  []string{"host/dev", "host/driver-root", "host/opt/nvbind/bin", "var/run/nri", "var/run/cdi", "run/nvbind", "tmp"},
		Links: map[string]string{"host/proc": "/proc", "host/sys": "/sys", "usr/local/bin/nvbind": "nvbind-node"},
	}.Build(dst)
	if err != nil {
		return err
	}
	for _, f := range files {
		fmt.Println("  /" + f)
	}
	if *only {
		return nil
	}
	labels := map[string]string{
		"org.opencontainers.image.title":       "nvbind",
		"org.opencontainers.image.description": "NVIDIA GPUs for containers: CDI specs, an NRI plugin for containerd and CRI-O, and OCI hooks",
		"org.opencontainers.image.source":      "https://github.com/nvbind/nvbind",
		"org.opencontainers.image.version":     *version,
		"org.opencontainers.image.created":     when.Format(time.RFC3339),
	}
	if *revision != "" {
		labels["org.opencontainers.image.revision"] = *revision
	}
	c := ociimage.Config{
		Name: *name, Architecture: *arch, Entrypoint: []string{"/usr/local/bin/nvbind"},
		Env:    []string{"PATH=/usr/local/bin"},
		Labels: labels, Created: when,
	}
	if err := ociimage.Write(dst, c, *out); err != nil {
		return err
	}
	fi, err := os.Stat(*out)
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s (%s, %.1f MiB)\n", *out, *name, float64(fi.Size())/(1<<20))
	return nil
}
