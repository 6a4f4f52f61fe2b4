package cluster

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pluginPIDs finds the processes of the NRI plugin the DaemonSet runs for this test's
// driver root, from the host's /proc.
func (s *setup) pluginPIDs() []int {
	var out []int
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		data, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(bytes.TrimRight(data, "\x00")), "\x00")
		if len(args) > 2 && strings.HasSuffix(args[0], "/nvbind") && args[1] == "nri" && slices.Contains(args, "--driver-root="+s.driverRoot) {
			if pid, err := strconv.Atoi(filepath.Base(d)); err == nil {
				out = append(out, pid)
			}
		}
	}
	return out
}

// burstWithKills creates gpuPods GPU pods (each asking for one GPU, with the
// required-plugins annotation) and plainPods plain ones in one burst, while the plugin's
// process is SIGKILLed kills times at moments a seeded generator picks; the kubelet
// restarts it each time. Every GPU pod must end with exactly its GPU and the driver's
// libcuda, and every plain pod with none: with the validator, nvbind-guard and the
// plugin's drain, no GPU container starts without its GPU, whenever the plugin dies.
func (s *setup) burstWithKills(t *testing.T, seed uint64, gpuPods, plainPods, kills int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 0))
	var manifest strings.Builder
	want := map[string]string{}
	for i := range gpuPods {
		name := fmt.Sprintf("burst-gpu-%d", i)
		gpu := strconv.Itoa(i % 2)
		want[name] = "/dev/nvidia" + gpu
		// a container that ever runs without its GPU says so and fails; one that the guard
		// refuses never runs, and the kubelet starts it again
		manifest.WriteString("---\n" + restartOnFailure(gpuPod("default", name, `gpus.nvbind.io/container.cuda: "`+gpu+`", required-plugins.noderesource.dev/container.cuda: '["nvbind"]'`, "",
			"ls /dev/nvidia*; test -c /dev/nvidia"+gpu+" && ldconfig -p | grep -q 'libcuda.so.1 ' && echo HAS-GPU || { echo NO-GPU; exit 3; }")))
	}
	for i := range plainPods {
		name := fmt.Sprintf("burst-plain-%d", i)
		want[name] = ""
		manifest.WriteString("---\n" + gpuPod("default", name, "", "", "ls /dev/nvidia* 2>&1; true"))
	}
	file := filepath.Join(s.dir, fmt.Sprintf("burst-%d.yaml", seed))
	if err := os.WriteFile(file, []byte(manifest.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	// each kill waits for the plugin to be back (the kubelet restarts it with a growing
	// backoff), then for a seeded moment of the wave of creations its return lets through
	var delays []time.Duration
	killed := make(chan int, 1)
	start := time.Now()
	go func() {
		n := 0
		dead := map[int]bool{} // killed, perhaps not yet reaped: still in /proc for a moment
		live := func() []int { return slices.DeleteFunc(s.pluginPIDs(), func(pid int) bool { return dead[pid] }) }
		deadline := time.Now().Add(4 * time.Minute)
		for n < kills && time.Now().Before(deadline) {
			if len(live()) == 0 {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			time.Sleep(100*time.Millisecond + time.Duration(rng.Int64N(int64(900*time.Millisecond))))
			for _, pid := range live() {
				if syscall.Kill(pid, syscall.SIGKILL) == nil {
					dead[pid] = true
					n++
					delays = append(delays, time.Since(start).Round(time.Millisecond))
				}
			}
		}
		killed <- n
	}()
	s.kubectl("apply", "-f", file)
	s.waitFor("every burst pod to finish", 10*time.Minute, func() error {
		var list struct {
			Items []struct {
				Metadata struct{ Name string }  `json:"metadata"`
				Status   struct{ Phase string } `json:"status"`
			} `json:"items"`
		}
		s.getJSON(&list, "-n", "default", "pods")
		left := 0
		for _, p := range list.Items {
			if _, ok := want[p.Metadata.Name]; ok && p.Status.Phase != "Succeeded" && p.Status.Phase != "Failed" {
				left++
			}
		}
		if left > 0 {
			return errorf("%d pods not finished", left)
		}
		return nil
	})
	n := <-killed
	guarded, validated, draining := 0, 0, 0
	for name, node := range want {
		p := s.pod("default", name)
		log := s.logs("default", name, "cuda")
		nodes := slices.DeleteFunc(nvidiaNodes(log), func(n string) bool { return !isGPUNode(n) })
		switch {
		case p.Status.Phase != "Succeeded":
			t.Errorf("seed %d: %s ended %s:\n%s", seed, name, p.Status.Phase, log)
		case node == "" && len(nodes) > 0:
			t.Errorf("seed %d: plain pod %s got %v", seed, name, nodes)
		case node != "" && (strings.Contains(log, "NO-GPU") || !strings.Contains(log, "HAS-GPU") || slices.ContainsFunc(nodes, func(n string) bool { return n != node })):
			t.Errorf("seed %d: %s ran without its GPU, or with another (want %s, got %v):\n%s", seed, name, node, nodes, log)
		}
		ev := s.events("default", name)
		guarded += strings.Count(ev, "did not handle this container")
		validated += strings.Count(ev, `required plugin "nvbind" not present`)
		draining += strings.Count(ev, "nvbind is stopping")
	}
	t.Logf("seed %d: %d GPU and %d plain pods in %s; %d plugin processes killed at %v; creates refused: %d by nvbind-guard, %d by the validator, %d while draining",
		seed, gpuPods, plainPods, time.Since(start).Round(time.Second), n, delays, guarded, validated, draining)
	if n < kills {
		t.Errorf("seed %d: %d plugin processes killed, want %d", seed, n, kills)
	}
	s.kubectl("delete", "-f", file, "--wait=true", "--timeout=180s")
}
