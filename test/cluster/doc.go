// Package cluster runs nvbind on a real single-node Kubernetes cluster: etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler and a kubelet on containerd 2.4
// with NRI, runc and Debian's CNI plugins, all built by test/k8s/build.sh. The test
// installs the DaemonSet from manifests/base with kubectl, applies every example pod
// unchanged, and checks what each container got, the refusals, the metrics behind the
// Service, restarts, NRI's default validator and the uninstall. It needs root and runs in
// `make test` (and `make test-k8s`).
package cluster
