package cluster

import (
	"fmt"
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
