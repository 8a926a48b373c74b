// Command etcd is etcd's own server entry point (go.etcd.io/etcd/server/v3/etcdmain) at the version the pinned
// Kubernetes release requires, so the test control plane stores its objects in a real etcd.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
