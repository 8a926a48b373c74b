// Command cdi-consumer resolves CDI device names the way a container runtime does, with the Go CDI library.
//
// It exists so the test suite can check the CDI specs cc-gpu writes against a real consumer instead of our own
// reading of the specification. The library version packaged by Debian (0.5.2) is older and stricter than the one
// Kata Containers loads (0.6.0), so a spec accepted here is accepted by Kata.
//
// Usage:
//
//	cdi-consumer -spec-dir DIR [-device vendor/class=name ...] [-annotations FILE] < oci-spec.json > oci-spec.json
//
// The registry is refreshed once over DIR (no auto refresh). Any error in any spec file fails the run, because a
// runtime that meets such an error fails every pod on the node. Devices come from -device flags and from the
// `cdi.k8s.io/*` entries of the JSON object in -annotations (the pod annotations a sandbox would carry). The OCI
// spec read from stdin (an empty object is fine) is printed back with the devices injected.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/container-orchestrated-devices/container-device-interface/pkg/cdi"
	oci "github.com/opencontainers/runtime-spec/specs-go"
)

type deviceList []string

func (d *deviceList) String() string     { return strings.Join(*d, ",") }
func (d *deviceList) Set(v string) error { *d = append(*d, v); return nil }

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "cdi-consumer: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	var devices deviceList
	specDir := flag.String("spec-dir", "", "CDI spec directory to load")
	annotationsFile := flag.String("annotations", "", "JSON file with pod annotations")
	flag.Var(&devices, "device", "fully qualified CDI device name to inject (repeatable)")
	flag.Parse()
	if *specDir == "" {
		fail("-spec-dir is required")
	}

	registry := cdi.GetRegistry(cdi.WithSpecDirs(*specDir), cdi.WithAutoRefresh(false))
	if err := registry.Refresh(); err != nil {
		fail("CDI registry refresh failed: %v", err)
	}
	if errs := registry.GetErrors(); len(errs) > 0 {
		var paths []string
		for path := range errs {
			paths = append(paths, path)
		}
		sort.Strings(paths)
		for _, path := range paths {
			for _, err := range errs[path] {
				fmt.Fprintf(os.Stderr, "cdi-consumer: spec error in %s: %v\n", path, err)
			}
		}
		os.Exit(1)
	}

	if *annotationsFile != "" {
		raw, err := os.ReadFile(*annotationsFile)
		if err != nil {
			fail("reading annotations: %v", err)
		}
		annotations := map[string]string{}
		if err := json.Unmarshal(raw, &annotations); err != nil {
			fail("decoding annotations: %v", err)
		}
		_, fromAnnotations, err := cdi.ParseAnnotations(annotations)
		if err != nil {
			fail("parsing CDI annotations: %v", err)
		}
		sort.Strings(fromAnnotations)
		devices = append(devices, fromAnnotations...)
	}

	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading OCI spec: %v", err)
	}
	spec := &oci.Spec{}
	if err := json.Unmarshal(input, spec); err != nil {
		fail("decoding OCI spec: %v", err)
	}
	if unresolved, err := registry.InjectDevices(spec, devices...); err != nil {
		fail("injecting devices (unresolved %v): %v", unresolved, err)
	}
	out, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		fail("encoding OCI spec: %v", err)
	}
	fmt.Println(string(out))
}
