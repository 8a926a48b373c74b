//go:build tools

// Package tools pins the Kubernetes control-plane commands this module builds, so that `go mod tidy` keeps every
// module they need in go.sum. The build names the commands directly (tests/cluster/build.py).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
