package dra

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/spec"
	"github.com/nvbind/nvbind/test/testutil"
)

// kubeletSide is the driver serving the kubelet's DRA gRPC on its socket, with an API
// server of client-go's fake clientset holding the claims.
type kubeletSide struct {
	client drapb.DRAPluginClient
	kube   *fake.Clientset
	cdiDir string
}

func serveGRPC(tb testing.TB, discover func(context.Context) (*gpu.Inventory, error)) *kubeletSide {
	tb.Helper()
	dataDir := tb.TempDir()
	k := &kubeletSide{kube: fake.NewClientset(), cdiDir: tb.TempDir()}
	d, err := New(Config{NodeName: testNode, CDIDir: k.cdiDir, DataDir: dataDir, Spec: spec.Options{HookPath: hookPath}, Discover: discover,
		Kube: k.kube, RegistrarDir: tb.TempDir(), Options: []kubeletplugin.Option{kubeletplugin.RegistrationService(false)}})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Error(err)
		}
	})
	sock := filepath.Join(dataDir, "dra.sock")
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no socket %s", sock)
		}
		time.Sleep(10 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	k.client = drapb.NewDRAPluginClient(conn)
	return k
}

func (k *kubeletSide) createClaim(tb testing.TB, c *resourceapi.ResourceClaim) *drapb.Claim {
	tb.Helper()
	if _, err := k.kube.ResourceV1().ResourceClaims(c.Namespace).Create(context.Background(), c, metav1.CreateOptions{}); err != nil {
		tb.Fatal(err)
	}
	return &drapb.Claim{Namespace: c.Namespace, Name: c.Name, Uid: string(c.UID)}
}

// TestKubeletGRPC prepares and unprepares a claim the way the kubelet does, over the
// driver's socket: NodePrepareResources answers with the claim's CDI name.
func TestKubeletGRPC(t *testing.T) {
	t.Parallel()
	k := serveGRPC(t, func(context.Context) (*gpu.Inventory, error) { return testInventory(), nil })
	ctx := context.Background()
	pc := k.createClaim(t, claim("a6f0b3de-0000-4000-8000-000000000001", "grpc", []result{{"gpu", "gpu-1"}}))
	resp, err := k.client.NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{Claims: []*drapb.Claim{pc}})
	if err != nil {
		t.Fatal(err)
	}
	r := resp.Claims[pc.Uid]
	if r == nil || r.Error != "" || len(r.Devices) != 1 || !slices.Equal(r.Devices[0].CdiDeviceIds, []string{ClaimKind + "=" + pc.Uid + "-gpu-1"}) {
		t.Fatalf("prepare: %+v", resp.Claims)
	}
	un, err := k.client.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: []*drapb.Claim{pc}})
	if err != nil || un.Claims[pc.Uid] == nil || un.Claims[pc.Uid].Error != "" {
		t.Fatalf("unprepare: %+v %v", un, err)
	}
	if m, _ := filepath.Glob(filepath.Join(k.cdiDir, "*")); len(m) != 0 {
		t.Errorf("left %v", m)
	}
}

// BenchmarkPrepareResourceClaims times NodePrepareResources of a one-GPU claim over the
// driver's gRPC socket, as the kubelet calls it: the claim read from the API (client-go's
// fake clientset), discovery of the fixture driver root (make fixtures; the test inventory
// without it), the claim's spec written and checked, the checkpoint saved. Each
// iteration prepares a new claim and unprepares it, untimed. It reports p50 and p99.
func BenchmarkPrepareResourceClaims(b *testing.B) {
	discover := func(context.Context) (*gpu.Inventory, error) { return testInventory(), nil }
	if root := os.Getenv(testutil.EnvRoots); root != "" {
		dr := testutil.DriverRoot(b, "debian-535")
		disc, err := gpu.New(gpu.WithDriverRoot(dr), gpu.WithDevRoot(dr), gpu.WithoutNVML())
		if err != nil {
			b.Fatal(err)
		}
		discover = disc.Discover
	}
	k := serveGRPC(b, discover)
	ctx := context.Background()
	took := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		pc := k.createClaim(b, claim(types.UID(fmt.Sprintf("b6f0b3de-0000-4000-8000-%012d", i)), fmt.Sprintf("bench-%d", i), []result{{"gpu", "gpu-1"}}))
		b.StartTimer()
		start := time.Now()
		resp, err := k.client.NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{Claims: []*drapb.Claim{pc}})
		took = append(took, time.Since(start))
		b.StopTimer()
		if err != nil || resp.Claims[pc.Uid].Error != "" {
			b.Fatalf("prepare: %v %+v", err, resp)
		}
		if _, err := k.client.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: []*drapb.Claim{pc}}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(took[len(took)*99/100].Microseconds())/1000, "p99-ms")
}
