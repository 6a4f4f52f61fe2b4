//go:build cgo

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
