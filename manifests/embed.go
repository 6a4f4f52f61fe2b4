// Package manifests holds nvbind's deployment files: the kustomize base and overlays for
// Kubernetes, runtime configuration snippets, examples, and the systemd units that
// `nvbind install` places (embedded here).
package manifests

import "embed"

// Systemd holds the units; @BINDIR@ stands for the folder of the installed binaries.
//
//go:embed systemd/*.service systemd/*.socket
var Systemd embed.FS
