//go:build !cgo

package gpu

import "context"

// This build cannot load NVIDIA's libraries: where discovery would, it stops with
// ErrNeedsCgo, so that no inventory differs from the cgo build's.

// LoadsLibraries reports whether this build loads NVIDIA's libraries (NVML, libcuda).
const LoadsLibraries = false

// nvmlLib is never set in this build.
type nvmlLib interface{}

func loadNVML(string) (nvmlLib, error) { return nil, ErrNeedsCgo }

func nvmlDevices(context.Context, nvmlLib) ([]Device, string, string, error) {
	return nil, "", "", ErrNeedsCgo
}

func cudaDriverVersion(string) (string, error) { return "", ErrNeedsCgo }
