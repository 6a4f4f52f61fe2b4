package gpu

import "syscall"

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
