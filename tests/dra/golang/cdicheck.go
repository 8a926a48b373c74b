// cdicheck loads every CDI spec in a directory with the Go CDI library (the loader container runtimes and Kata's Go
// runtime use) and resolves the qualified device names given on the command line. It exits non-zero and prints the
// library's error when a spec is refused or a device is missing. Injection is not attempted: it stats host device
// nodes (/dev/vfio/N), which a test machine does not have.
package main

import (
	"fmt"
	"os"

	"github.com/container-orchestrated-devices/container-device-interface/pkg/cdi"
)

func main() {
	reg := cdi.GetRegistry(cdi.WithSpecDirs(os.Args[1]), cdi.WithAutoRefresh(false))
	if err := reg.Refresh(); err != nil {
		fmt.Println("refresh failed:", err)
		os.Exit(1)
	}
	for _, name := range os.Args[2:] {
		dev := reg.DeviceDB().GetDevice(name)
		if dev == nil {
			fmt.Println("unresolved device:", name)
			os.Exit(1)
		}
		fmt.Printf("%s: %d device nodes\n", name, len(dev.ContainerEdits.DeviceNodes))
	}
}
