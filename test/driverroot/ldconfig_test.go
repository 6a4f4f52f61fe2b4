package driverroot

import "os/exec"

// runLDConfig has ldconfig make the SONAME links in dir only (-n), without a cache.
func runLDConfig(ldconfig, dir string) ([]byte, error) {
	return exec.Command(ldconfig, "-n", dir).CombinedOutput()
}
