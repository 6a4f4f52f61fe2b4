package cluster

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// BenchmarkPodStart times a pod from `kubectl apply` to Succeeded, interleaving a plain
// pod and a GPU pod (GPU 1 by annotation, with the driver's libraries and the hook) each
// iteration, and reports the medians and the GPU pod's added start time.
// make bench runs it with -benchtime 10x.
func BenchmarkPodStart(b *testing.B) {
	s := newSetup(b, k8sVersion)
	s.install()
	var plain, gpu []time.Duration
	startPod := func(name, annotations string) time.Duration {
		start := time.Now()
		s.applyPod(gpuPod("default", name, annotations, "", "true"))
		s.kubectl("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/"+name, "--timeout=120s")
		d := time.Since(start)
		s.kubectl("delete", "pod", name, "--wait=false")
		return d
	}
	// one of each first, so that neither pays for a cold cache
	startPod("warm-plain", "")
	startPod("warm-gpu", `gpus.nvbind.io: "1"`)
	b.ResetTimer()
	for i := range b.N {
		plain = append(plain, startPod(fmt.Sprintf("plain-%d", i), ""))
		gpu = append(gpu, startPod(fmt.Sprintf("gpu-%d", i), `gpus.nvbind.io: "1"`))
	}
	b.StopTimer()
	mp, mg := median(plain), median(gpu)
	b.ReportMetric(float64(mp.Microseconds())/1000, "plain-ms")
	b.ReportMetric(float64(mg.Microseconds())/1000, "gpu-ms")
	b.ReportMetric(float64((mg-mp).Microseconds())/1000, "added-ms")
}

// BenchmarkClaimStart times pods from `kubectl apply` to Succeeded on a node that runs the
// DRA driver (GPU 1) and the device plugin (GPU 0) in nvbind's pod, interleaving each
// iteration a plain pod, a pod of one nvidia.com/gpu and a pod of a one-GPU
// ResourceClaimTemplate (the claim created, allocated by the scheduler, prepared by the
// driver, its CDI spec resolved by containerd), and reports the medians.
// make bench runs it with -benchtime 10x.
func BenchmarkClaimStart(b *testing.B) {
	s := newSetup(b, k8sVersion)
	s.kubectl("apply", "-k", s.draOverlay(filepath.Join(s.runNVBind(), "xid-bench"), withDevicePlugin))
	s.kubectl("-n", "nvbind-system", "rollout", "status", "ds/nvbind", "--timeout=180s")
	s.waitCapacity(b, "1")
	s.waitSlices(b, "gpu-1")
	s.applyPod(claimTemplate("bench-gpu", `device.driver == "gpu.nvbind.io"`, ""))
	run := func(name, manifest string) time.Duration {
		start := time.Now()
		s.applyPod(manifest)
		s.kubectl("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/"+name, "--timeout=120s")
		d := time.Since(start)
		// the next pod of the kind waits for this one's GPU
		s.kubectl("delete", "pod", name, "--grace-period=1", "--wait=true")
		return d
	}
	kinds := []struct {
		name     string
		manifest func(string) string
		took     []time.Duration
	}{
		{"plain", func(n string) string { return gpuPod("default", n, "", "", "true") }, nil},
		{"device-plugin", func(n string) string { return resourcePod(n, 1, "true") }, nil},
		{"dra", func(n string) string { return claimPod(n, "resourceClaimTemplateName: bench-gpu", "true") }, nil},
	}
	for i := range kinds {
		run("warm-"+kinds[i].name, kinds[i].manifest("warm-"+kinds[i].name))
	}
	b.ResetTimer()
	for i := range b.N {
		for k := range kinds {
			name := fmt.Sprintf("%s-%d", kinds[k].name, i)
			kinds[k].took = append(kinds[k].took, run(name, kinds[k].manifest(name)))
		}
	}
	b.StopTimer()
	for _, k := range kinds {
		b.ReportMetric(float64(median(k.took).Microseconds())/1000, k.name+"-ms")
	}
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
