package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/nvbind/nvbind/test/testutil"
)

// nvidiaToolkit is the folder with NVIDIA's nvidia-ctk, nvidia-container-runtime and
// nvidia-cdi-hook (v1.20.2, make tools-ctk), for side-by-side benchmarks; it skips
// without them.
func nvidiaToolkit(b *testing.B) string {
	b.Helper()
	dir := nvidiaToolkitDir()
	if dir == "" {
		b.Skip("NVIDIA's toolkit is not installed ($NVBIND_NVIDIA_TOOLKIT, make tools-ctk)")
	}
	testutil.KeepHostDevNodes(b) // NVIDIA's tools make /dev/nvidiactl on the host
	return dir
}

// nvidiaToolkitDir is $NVBIND_NVIDIA_TOOLKIT when it holds NVIDIA's programs, else "".
func nvidiaToolkitDir() string {
	dir := os.Getenv("NVBIND_NVIDIA_TOOLKIT")
	for _, p := range []string{"nvidia-ctk", "nvidia-container-runtime", "nvidia-cdi-hook"} {
		if _, err := os.Stat(filepath.Join(dir, p)); dir == "" || err != nil {
			return ""
		}
	}
	return dir
}

// nvidiaRuntimeConfig sets NVIDIA's runtime up on a driver root: its own CDI spec
// (nvidia-ctk cdi generate --mode=management) and a config.toml in CDI mode; it returns
// the config file ($NVIDIA_CTK_CONFIG_FILE_PATH).
func nvidiaRuntimeConfig(b *testing.B, toolkit, driverRoot, runc string) string {
	b.Helper()
	dir := b.TempDir()
	specs := filepath.Join(dir, "cdi")
	out, err := exec.Command(filepath.Join(toolkit, "nvidia-ctk"), "cdi", "generate", "--mode=management", "--driver-root", driverRoot,
		"--dev-root", driverRoot, "--nvidia-cdi-hook-path", filepath.Join(toolkit, "nvidia-cdi-hook"),
		"--output", filepath.Join(specs, "nvidia.yaml")).CombinedOutput()
	if err != nil {
		b.Fatalf("nvidia-ctk cdi generate: %v\n%s", err, out)
	}
	conf := filepath.Join(dir, "config.toml")
	data := "[nvidia-container-runtime]\nmode = \"cdi\"\nruntimes = [\"" + runc + "\"]\n" +
		"[nvidia-container-runtime.modes.cdi]\nspec-dirs = [\"" + specs + "\"]\ndefault-kind = \"nvidia.com/gpu\"\n"
	if err := os.WriteFile(conf, []byte(data), 0o644); err != nil {
		b.Fatal(err)
	}
	return conf
}

func median(d []time.Duration) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[len(s)/2]) / float64(time.Millisecond)
}

// pairedMedian is the median, over the interleaved rounds, of what case i took beyond
// case 0 (plain) in the same round: the machine's drift between rounds, which the
// difference of the two medians carries, cancels out.
func pairedMedian(times [][]time.Duration, i int) float64 {
	d := make([]time.Duration, 0, len(times[0]))
	for r := range min(len(times[0]), len(times[i])) {
		d = append(d, times[i][r]-times[0][r])
	}
	return median(d)
}

// BenchmarkRuntimeWrapperDocker: added create+start over a plain container, through
// Docker Engine 29, for nvbind-runtime and NVIDIA's nvidia-container-runtime (v1.20.2, CDI
// mode, its own spec) on the same driver root, every GPU and every capability, nvbind's
// with its edit service (as nvbind install enables it) and without (nvbind-runtime-edit
// started per container), and for a container that asks for nothing run by
// nvbind-runtime; interleaved, medians.
func BenchmarkRuntimeWrapperDocker(b *testing.B) {
	testutil.RequiresRoot(b)
	toolkit := nvidiaToolkit(b)
	driverRoot := testutil.DriverRoot(b, "debian-535")
	bin := testutil.BuildNVBind(b, b.TempDir())
	runc := filepath.Join(dockerTools(b), "runc")
	socket := filepath.Join(b.TempDir(), "run", "runtime.sock")
	ours := runtimeConfig(b, driverRoot, runc, socket)
	theirs := nvidiaRuntimeConfig(b, toolkit, driverRoot, runc)
	var front string
	d := startDockerd(b, bin, driverRoot, func(conf string, env *[]string) {
		front = filepath.Join(filepath.Dir(conf), "nvbind/bin/nvbind-runtime")
		out, err := exec.Command(bin, "install", "--components", "runtime", "--prefix", filepath.Join(filepath.Dir(conf), "nvbind"),
			"--enable", "docker-runtime", "--docker-config", conf).CombinedOutput()
		if err != nil {
			b.Fatalf("nvbind install: %v\n%s", err, out)
		}
		patchDaemonJSON(b, conf, map[string]any{"runtimes": map[string]any{
			"nvbind":                 map[string]string{"path": filepath.Join(filepath.Dir(conf), "nvbind/bin/nvbind-runtime")},
			"nvidia-toolkit-runtime": map[string]string{"path": filepath.Join(toolkit, "nvidia-container-runtime")},
		}})
		*env = append(*env, "NVBIND_RUNTIME_CONFIG="+ours, "NVIDIA_CTK_CONFIG_FILE_PATH="+theirs)
	})
	d.loadBusybox()
	_, _ = editService(b, front, socket)
	all := []string{"NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=all"}
	cases := []struct {
		name      string
		c         container
		noService bool
	}{
		{"plain", container{script: "true"}, false},
		{"nvbind-runtime-asks-nothing", container{script: "true", runtime: "nvbind"}, false},
		{"nvbind-runtime-all", container{script: "true", runtime: "nvbind", env: all}, false},
		{"nvidia-container-runtime-all", container{script: "true", runtime: "nvidia-toolkit-runtime", env: all}, false},
		// no edit service listening (its socket moved aside): nvbind-runtime-edit edits
		{"nvbind-runtime-all-without-service", container{script: "true", runtime: "nvbind", env: all}, true},
	}
	times := make([][]time.Duration, len(cases))
	for b.Loop() {
		for i, tc := range cases {
			if tc.noService {
				if err := os.Rename(socket, socket+".aside"); err != nil {
					b.Fatal(err)
				}
			}
			_, took, err := d.runContainer(tc.c)
			if tc.noService {
				if err := os.Rename(socket+".aside", socket); err != nil {
					b.Fatal(err)
				}
			}
			if err != nil {
				b.Fatalf("%s: %v", tc.name, err)
			}
			times[i] = append(times[i], took)
		}
	}
	reportWrapper(b, times, "plain", cases[1].name, cases[2].name, cases[3].name, cases[4].name)
}

// reportWrapper reports the wrapper benchmarks' medians: the baseline's, the time each
// other case adds to it, and nvbind's added time over NVIDIA's runtime's, with the edit
// service and without.
func reportWrapper(b *testing.B, times [][]time.Duration, base string, names ...string) {
	plain := median(times[0])
	b.ReportMetric(plain, "ms-median/"+base)
	for i, name := range names {
		b.ReportMetric(median(times[i+1])-plain, "ms-added/"+name)
		b.ReportMetric(pairedMedian(times, i+1), "ms-paired/"+name)
	}
	theirs := median(times[3]) - plain
	b.ReportMetric((median(times[2])-plain)/theirs, "ratio/nvbind-vs-nvidia")
	b.ReportMetric((median(times[4])-plain)/theirs, "ratio/nvbind-without-service-vs-nvidia")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkRuntimeWrapperRunc: the same through runc directly: create (by runc, by
// nvbind-runtime for a container that asks for nothing and one with every GPU and
// capability, and by NVIDIA's nvidia-container-runtime, which edits on create only) and
// start of a bundle; interleaved, medians of create+start. Creates name --pid-file, as
// containerd's shim does: nvbind-runtime's service runs the driver's steps, and a last
// case leaves them to the hook (stage = "hook").
func BenchmarkRuntimeWrapperRunc(b *testing.B) {
	testutil.RequiresRoot(b)
	toolkit := nvidiaToolkit(b)
	runc := testutil.RequiresCommand(b, "runc")
	driverRoot := testutil.DriverRoot(b, "debian-535")
	bin := testutil.BuildNVBind(b, b.TempDir())
	socket := filepath.Join(b.TempDir(), "run", "runtime.sock")
	_, _ = editService(b, testutil.RuntimeBinary(bin), socket)
	withService, withoutService := runtimeConfig(b, driverRoot, runc, socket), runtimeConfig(b, driverRoot, runc, "")
	// the service's edit, with the driver's steps left to the hook
	hookStage := filepath.Join(b.TempDir(), "runtime.toml")
	if data, err := os.ReadFile(withService); err != nil || os.WriteFile(hookStage, append(data, "stage = \"hook\"\n"...), 0o600) != nil {
		b.Fatal(err)
	}
	b.Setenv("NVIDIA_CTK_CONFIG_FILE_PATH", nvidiaRuntimeConfig(b, toolkit, driverRoot, runc))
	plainBundle := runcBundle(b, runc, "", "", "true")
	gpuBundle := runcBundle(b, runc, "", "", "true")
	setEnv(b, gpuBundle, "NVIDIA_VISIBLE_DEVICES=all")
	setEnv(b, gpuBundle, "NVIDIA_DRIVER_CAPABILITIES=all")
	pristine := func(bundle string) []byte {
		data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
		if err != nil {
			b.Fatal(err)
		}
		return data
	}
	plainSpec, gpuSpec := pristine(plainBundle), pristine(gpuBundle)
	cases := []struct {
		name, runtime, bundle string
		spec                  []byte
		config                string
	}{
		{"runc", runc, plainBundle, plainSpec, withService},
		{"nvbind-runtime-asks-nothing", testutil.RuntimeBinary(bin), plainBundle, plainSpec, withService},
		{"nvbind-runtime-all", testutil.RuntimeBinary(bin), gpuBundle, gpuSpec, withService},
		{"nvidia-container-runtime-all", filepath.Join(toolkit, "nvidia-container-runtime"), gpuBundle, gpuSpec, withService},
		{"nvbind-runtime-all-without-service", testutil.RuntimeBinary(bin), gpuBundle, gpuSpec, withoutService},
		{"nvbind-runtime-all-steps-by-hook", testutil.RuntimeBinary(bin), gpuBundle, gpuSpec, hookStage},
	}
	times := make([][]time.Duration, len(cases))
	n := 0
	for b.Loop() {
		for i, tc := range cases {
			// each run starts from the bundle's own config.json: the wrappers rewrite it
			if err := os.WriteFile(filepath.Join(tc.bundle, "config.json"), tc.spec, 0o644); err != nil {
				b.Fatal(err)
			}
			n++
			id := fmt.Sprintf("nvbind-bench-%d", n)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			start := time.Now()
			// the container's init keeps create's stdio open until it exits: errors go to a file
			errf, err := os.CreateTemp(b.TempDir(), "stderr")
			if err != nil {
				b.Fatal(err)
			}
			// with --pid-file, as containerd's shim runs it
			create := exec.CommandContext(ctx, tc.runtime, "create", "--bundle", tc.bundle, "--pid-file", filepath.Join(b.TempDir(), "init.pid"), id)
			create.Env = append(os.Environ(), "NVBIND_RUNTIME_CONFIG="+tc.config)
			create.Stderr = errf
			err = create.Run()
			var out []byte
			if err == nil {
				out, err = exec.CommandContext(ctx, runc, "start", id).CombinedOutput()
			} else {
				out, _ = os.ReadFile(errf.Name())
			}
			_ = errf.Close()
			took := time.Since(start)
			cancel()
			_ = exec.Command(runc, "delete", "-f", id).Run()
			if err != nil {
				b.Fatalf("%s: %v\n%s", tc.name, err, out)
			}
			times[i] = append(times[i], took)
		}
	}
	reportWrapper(b, times, "runc", cases[1].name, cases[2].name, cases[3].name, cases[4].name, cases[5].name)
}
