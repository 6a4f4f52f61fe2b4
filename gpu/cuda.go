package gpu

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

typedef int (*nvbind_get_version_t)(int *);

static int nvbind_cuda_driver_version(const char *path, int *version, const char **err) {
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h) { *err = dlerror(); return -1; }
	nvbind_get_version_t f = (nvbind_get_version_t)dlsym(h, "cuDriverGetVersion");
	if (!f) { *err = dlerror(); dlclose(h); return -1; }
	int r = f(version);
	dlclose(h);
	return r;
}
*/
import "C"

import (
	"fmt"
	"syscall"
	"unsafe"
)

// cudaDriverVersion asks the driver's libcuda for the CUDA version it implements
// (cuDriverGetVersion needs no GPU and no loaded kernel module). It returns "12.2".
func cudaDriverVersion(libcuda string) (string, error) {
	cpath := C.CString(libcuda)
	defer C.free(unsafe.Pointer(cpath))
	var v C.int
	var cerr *C.char
	if r := C.nvbind_cuda_driver_version(cpath, &v, &cerr); r != 0 {
		if cerr != nil {
			return "", fmt.Errorf("load %s: %s", libcuda, C.GoString(cerr))
		}
		return "", fmt.Errorf("cuDriverGetVersion in %s returned %d", libcuda, int(r))
	}
	return fmt.Sprintf("%d.%d", int(v)/1000, int(v)%1000/10), nil
}

// cudaKey tells one libcuda file from another: its path and identity. A file replaced or
// written (a driver upgrade) has another inode, size, modification or change time.
type cudaKey struct {
	path               string
	dev, ino           uint64
	size, mtime, ctime int64
}

// cudaVersion is cudaDriverVersion, asked once per libcuda file.
func (d *Discoverer) cudaVersion(libcuda string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(libcuda, &st); err != nil {
		return cudaDriverVersion(libcuda)
	}
	key := cudaKey{path: libcuda, dev: st.Dev, ino: st.Ino, size: st.Size,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}
	d.mu.Lock()
	if d.cuda.key == key && d.cuda.version != "" {
		v := d.cuda.version
		d.mu.Unlock()
		return v, nil
	}
	d.mu.Unlock()
	v, err := cudaDriverVersion(libcuda)
	if err == nil {
		d.mu.Lock()
		d.cuda.key, d.cuda.version = key, v
		d.mu.Unlock()
	}
	return v, err
}
