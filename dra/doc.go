// Package dra is nvbind's Kubernetes DRA driver, gpu.nvbind.io: it publishes the node's
// GPUs and MIG devices as ResourceSlices with their attributes, and prepares the claims
// the scheduler allocated from them by writing one CDI spec per claim from live discovery,
// which the kubelet hands to the runtime by name. It runs on the kubelet plugin helper of
// k8s.io/dynamic-resource-allocation (the kubelet's DRA gRPC v1 and v1beta1).
package dra
