// Command cdi-consumer resolves CDI device names the way a container runtime does, with the Go CDI library.
//
// It exists so the test suite can check the CDI specs cc-gpu writes against a real consumer instead of our own
// reading of the specification. It is built once per library version the runtimes vendor: v0.6.0 as Kata's Go runtime
// uses it (this import path), and tags.cncf.io/container-device-interface v1.1.0 as containerd 2.2/2.3 use it (the
// build rewrites the import path; see tests/cdi/consumer.py). Each version has its own go.mod/go.sum beside this file.
// Debian's 0.5.2 is not used: it lacks the per-feature minimum cdiVersion check that v0.6.0 applies.
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

	registry, err := cdi.NewCache(cdi.WithSpecDirs(*specDir), cdi.WithAutoRefresh(false))
	if err != nil {
		fail("creating the CDI cache: %v", err)
	}
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
