package hook

import (
	"encoding/json"
	"fmt"
	"io"
)

// The driver reads application profiles from this folder (besides the user's ~/.nv);
// nvbind's file sorts early, as NVIDIA's container tooling names its own.
const (
	appProfileDir  = "/etc/nvidia/nvidia-application-profiles-rc.d"
	appProfileFile = appProfileDir + "/10-nvbind-container.conf"
)

// maxEGLMinor is the last GPU minor EGLVisibleDGPUDevices can name: it is a 32-bit mask
// whose bit N shows /dev/nvidiaN.
const maxEGLMinor = 31

// appProfile is the profile that makes EGL and Vulkan see only the GPUs of minors: one
// profile for every process in the container.
func appProfile(minors []int) ([]byte, uint32) {
	var mask uint32
	for _, m := range minors {
		if m >= 0 && m <= maxEGLMinor {
			mask |= 1 << m
		}
	}
	type profile struct {
		Name     string `json:"name"`
		Settings []any  `json:"settings"`
	}
	type rule struct {
		Pattern []any  `json:"pattern"`
		Profile string `json:"profile"`
	}
	doc := struct {
		Profiles []profile `json:"profiles"`
		Rules    []rule    `json:"rules"`
	}{
		Profiles: []profile{{Name: "nvbind-container", Settings: []any{"EGLVisibleDGPUDevices", mask}}},
		Rules:    []rule{{Pattern: []any{}, Profile: "nvbind-container"}},
	}
	data, _ := json.Marshal(doc) // plain values: cannot fail
	return append(data, '\n'), mask
}

// writeAppProfile writes the profile into the container root, replacing an earlier one.
// A container without GPU nodes gets none (a mask of 0 would hide every GPU from EGL).
func writeAppProfile(r *containerRoot, minors []int, log io.Writer) error {
	data, mask := appProfile(minors)
	if mask == 0 {
		fmt.Fprintf(log, "update-application-profile: no /dev/nvidiaN node (of minor 0-%d) in the container: no profile written\n", maxEGLMinor)
		return nil
	}
	for _, m := range minors {
		if m > maxEGLMinor {
			fmt.Fprintf(log, "update-application-profile: /dev/nvidia%d is beyond what EGLVisibleDGPUDevices can name: EGL does not see it\n", m)
		}
	}
	if _, err := r.dir(appProfileDir, true); err != nil {
		return err
	}
	return r.writeFile(appProfileFile, data)
}
