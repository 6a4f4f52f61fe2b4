# nvbind: see README.md. `sudo make deps demo` and `sudo make deps test` set up a fresh Debian 12.
SHELL        := /bin/bash
GO           ?= go
CACHE        ?= $(or $(NVBIND_CACHE),/var/cache/nvbind)
export NVBIND_CACHE := $(CACHE)
ROOTS        ?= /var/tmp/nvbind-roots
BIN          = $(BINDIR)/nvbind
VERSION      ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT       ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS      := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
export CGO_CFLAGS := -O2 -g -Wno-deprecated-declarations
export PATH  := $(CACHE)/bin:$(PATH)
GOLANGCI_LINT ?= $(CACHE)/bin/golangci-lint
# root-only tests (mknod, mounts, runc, Podman, containerd) run when we are root
TEST_ENV     := NVBIND_TEST_ROOTS=$(ROOTS) NVBIND_REQUIRE_FIXTURES=1 $(if $(filter 0,$(shell id -u)),NVBIND_TEST_ROOT=1,)
DEMO_OUT     := _output/demo
# The image `make image` writes, and the one manifests/base names (a test keeps them equal).
IMAGE_REPO   ?= ghcr.io/nvbind/nvbind
IMAGE_TAG    ?= v0.1.0
IMAGE        ?= $(IMAGE_REPO):$(IMAGE_TAG)
HOST_ARCH    := $(shell $(GO) env GOARCH)
ARCH         ?= $(HOST_ARCH)
IMAGE_TAR    ?= _output/nvbind-image-$(ARCH).tar
# another ARCH cross-compiles into bin/linux-ARCH, the cgo part with Debian's cross gcc
# (make tools-cross installs gcc-aarch64-linux-gnu)
BINDIR       := $(if $(filter $(HOST_ARCH),$(ARCH)),bin,bin/linux-$(ARCH))
CROSS_CC_arm64 := aarch64-linux-gnu-gcc
CROSS_CC_amd64 := x86_64-linux-gnu-gcc
BUILD_ENV    := GOARCH=$(ARCH) $(if $(filter $(HOST_ARCH),$(ARCH)),,CC=$(CROSS_CC_$(ARCH)))
# The lean nvbind runs one-shot commands that touch a few MiB of fresh heap and exit;
# internal/hugeheap puts the heap's first 4 MiB on huge pages. Since Go 1.26 a random
# number of pages, up to 4 MiB, opens the heap, so a command's heap spills past those
# 4 MiB into pages faulted 4 KiB at a time (about 2 ms of cdi generate on a VM).
# GOEXPERIMENT=norandomizedheapbase64, where the toolchain still has it, keeps Go 1.25's
# fixed heap base: the randomization guards cgo's memory, and the lean build has no cgo.
# (added to the experiments already set, in the environment or by go env -w)
LEAN_ENV     = $(shell e=$$($(GO) env GOEXPERIMENT); e=$${e:+$$e,}norandomizedheapbase64; \
                 GOEXPERIMENT=$$e $(GO) env GOEXPERIMENT >/dev/null 2>&1 && echo GOEXPERIMENT=$$e)
# the runtime wrapper's front and the hook are small static C programs (one exec per
# runtime command or container start): built with musl where it is installed (musl-tools),
# whose static start costs a third of glibc's, else with the C compiler and glibc
RUNTIME_CC   := $(if $(filter $(HOST_ARCH),$(ARCH)),$(shell command -v musl-gcc || echo cc),$(CROSS_CC_$(ARCH)))

.PHONY: tools-ctk all build image deps tools-lint tools-containerd tools-cross tools-docker tools-helm fixtures k8s test test-k8s test-unit test-root test-gpu bench bench-startup fuzz lint vet fmt check-tidy demo clean

all: build

# nvbind, and nvbind-hook: the static, small C program that specs and adjustments run as
# the hook on every container start, with nvbind-hook-go, the full hook it hands the rest
# to; nvbind-runtime (a static C front) and nvbind-runtime-edit, the OCI runtime wrapper
# bin/nvbind is the lean CLI (cdi, info, hook, install): it links no NRI, gRPC, Prometheus
# or kubelet code, so it starts fast. bin/nvbind-node is the full build, which nvbind runs
# for nri, device-plugin and doctor.
build:
	$(BUILD_ENV) $(LEAN_ENV) CGO_ENABLED=0 $(GO) build -trimpath -tags nvbind_lean -ldflags '-s -w $(LDFLAGS)' -o $(BINDIR)/nvbind ./cmd/nvbind
	$(BUILD_ENV) CGO_ENABLED=1 $(GO) build -trimpath -ldflags '-s -w $(LDFLAGS)' -o $(BINDIR)/nvbind-node ./cmd/nvbind
	$(BUILD_ENV) CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w $(LDFLAGS)' -o $(BINDIR)/nvbind-hook-go ./cmd/nvbind-hook-go
	$(RUNTIME_CC) -static -O2 -s -Wall -Wextra -Werror -o $(BINDIR)/nvbind-hook cmd/nvbind-hook/nvbind-hook.c
	$(BUILD_ENV) CGO_ENABLED=1 $(GO) build -trimpath -ldflags '-s -w $(LDFLAGS)' -o $(BINDIR)/nvbind-runtime-edit ./cmd/nvbind-runtime-edit
	$(RUNTIME_CC) -static -O2 -s -Wall -Wextra -Werror -o $(BINDIR)/nvbind-runtime cmd/nvbind-runtime/nvbind-runtime.c

# nvbind's container image as an OCI archive, from the local build and no registry:
# nvbind, nvbind-hook (with nvbind-hook-go) and exactly the shared objects nvbind and the driver's NVML need.
# Load it with `ctr -n k8s.io images import $(IMAGE_TAR)` or `podman load -i $(IMAGE_TAR)`.
image: build
	$(GO) run ./internal/cmd/mkimage -bin $(BINDIR) -arch $(ARCH) -name $(IMAGE) -version $(IMAGE_TAG) \
	  -revision $(COMMIT) -created $$(git log -1 --format=%ct 2>/dev/null || date +%s) -out $(IMAGE_TAR)

# Debian packages: what building and the demo need. Lint and the tests install their
# own tools (golangci-lint; containerd built from source) on first use.
deps:
	test/deps.sh packages

tools-lint:
	test/deps.sh lint

tools-containerd:
	test/deps.sh containerd

tools-cross:
	test/deps.sh cross

tools-docker:
	test/deps.sh docker

tools-helm:
	test/deps.sh helm

fixtures:
	test/driverroot/build.sh $(ROOTS)

# etcd and Kubernetes (apiserver, controller-manager, scheduler, kubelet, kubectl) for the
# cluster test, built from the Go module proxy into $(CACHE)/k8s (about 10 minutes, once)
k8s:
	test/k8s/build.sh
	K8S_VERSION=v1.37.2 test/k8s/build.sh

# Everything: unit tests, fuzz seeds, golden files, and (as root) runc, Podman and
# containerd end to end against the driver roots built from Debian's NVIDIA packages.
# As root this includes the single-node Kubernetes cluster of test/cluster.
test: fixtures tools-helm $(if $(filter 0,$(shell id -u)),tools-containerd tools-cross tools-docker k8s,)
	$(TEST_ENV) $(GO) test -race -count=1 -timeout 40m ./...

# Only the cluster scenarios, verbosely (as root).
test-k8s: fixtures tools-containerd tools-helm k8s
	NVBIND_TEST_ROOT=1 NVBIND_TEST_ROOTS=$(ROOTS) NVBIND_REQUIRE_FIXTURES=1 $(GO) test -count=1 -v -timeout 30m ./test/cluster

# Hermetic: no fixtures, no root.
test-unit:
	$(GO) test -race -count=1 ./...

test-root: fixtures tools-containerd
	NVBIND_TEST_ROOT=1 NVBIND_TEST_ROOTS=$(ROOTS) NVBIND_REQUIRE_FIXTURES=1 $(GO) test -count=1 -run 'Runc|Podman|Containerd|LDCache|Protect|CUDACompat' ./...

test-gpu: build
	NVBIND_TEST_GPU=1 NVBIND_TEST_ROOT=1 $(GO) test -count=1 -run TestGPUHost -v ./test/e2e

# Benchmarks; containerd's create+start is timed over 40 container pairs to see through
# the noise of a busy machine.
# whole-command start-up side by side with NVIDIA's nvidia-ctk (installed once from the
# Go module proxy into $(CACHE)/ctk-$(CTK_VERSION))
CTK_VERSION ?= v1.20.2
CTK := $(CACHE)/ctk-$(CTK_VERSION)
BENCH_ENV = NVBIND_NVIDIA_CTK=$(CTK)/nvidia-ctk NVBIND_NVIDIA_TOOLKIT=$(CTK)

# NVIDIA's toolkit commands (nvidia-ctk, nvidia-container-runtime, nvidia-cdi-hook), for the
# side-by-side benchmarks only
tools-ctk:
	@test -x $(CTK)/nvidia-cdi-hook || GOBIN=$(CTK) $(GO) install \
	  github.com/NVIDIA/nvidia-container-toolkit/cmd/nvidia-ctk@$(CTK_VERSION) \
	  github.com/NVIDIA/nvidia-container-toolkit/cmd/nvidia-container-runtime@$(CTK_VERSION) \
	  github.com/NVIDIA/nvidia-container-toolkit/cmd/nvidia-cdi-hook@$(CTK_VERSION)

bench-startup: fixtures tools-ctk
	$(TEST_ENV) $(BENCH_ENV) $(GO) test -run '^$$' -bench StartupVsToolkit -benchtime 40x -count=1 ./cmd/nvbind

bench: fixtures tools-ctk $(if $(filter 0,$(shell id -u)),tools-containerd tools-docker k8s,)
	$(TEST_ENV) $(BENCH_ENV) $(GO) test -run '^$$' -bench . -benchmem -count=1 $$($(GO) list ./... | grep -v '/test/e2e\|/test/cluster')
	$(TEST_ENV) $(BENCH_ENV) $(GO) test -run '^$$' -bench . -benchtime 40x -count=1 -timeout 30m ./test/e2e
	$(TEST_ENV) $(GO) test -run '^$$' -bench . -benchtime 10x -count=1 -timeout 20m ./test/cluster

fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$target"; \
	    $(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime=$${FUZZTIME:-30s} $$pkg || exit 1; \
	  done; \
	done

lint: tools-lint
	$(GOLANGCI_LINT) run ./...
	$(GOLANGCI_LINT) run --build-tags nvbind_lean ./cmd/nvbind/...

vet:
	$(GO) vet ./...
	$(GO) vet -tags nvbind_lean ./cmd/nvbind

fmt:
	gofmt -w $$(git ls-files '*.go')

check-tidy:
	$(GO) mod tidy && git diff --exit-code go.mod go.sum

# Runs nvbind on this host's GPUs; without an NVIDIA driver, on the sample driver root
# built from Debian's packages. Writes a CDI spec and, where Podman is installed, starts a
# container that uses GPU 0.
demo: build
	@set -e; root=/; \
	if [ ! -e /proc/driver/nvidia/version ]; then \
	  $(MAKE) --no-print-directory fixtures; root=$(ROOTS)/debian-535; \
	  echo "No NVIDIA driver on this host: using the sample driver root $$root"; fi; \
	mkdir -p $(DEMO_OUT); \
	echo "+ nvbind info"; $(BIN) info --driver-root $$root --dev-root $$root; \
	echo "+ nvbind cdi generate --output /var/run/cdi/"; \
	$(BIN) cdi generate --driver-root $$root --dev-root $$root --hook-path $(CURDIR)/bin/nvbind-hook --output /var/run/cdi/; \
	$(BIN) cdi list --spec-dir /var/run/cdi; \
	echo "+ nvbind doctor"; $(BIN) doctor --driver-root $$root --dev-root $$root || true; \
	if command -v podman >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  rm -rf $(DEMO_OUT)/rootfs; NVBIND_TEST_ROOT=1 $(GO) test -count=1 -run TestBuildDemoRootfs ./test/e2e -args -rootfs $(CURDIR)/$(DEMO_OUT)/rootfs >/dev/null; \
	  echo "+ podman run --device nvidia.com/gpu=0 ..."; \
	  podman --runtime runc run --rm --network=none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
	    --device nvidia.com/gpu=0 --rootfs $(CURDIR)/$(DEMO_OUT)/rootfs:O /bin/sh -c \
	    'ls -l /dev/nvidia*; ldconfig -p | grep libcuda; cuda-probe'; \
	fi

clean:
	rm -rf bin _output
