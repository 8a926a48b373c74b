// Command kata-oracle loads a Kata Containers configuration file with Kata's own loader and prints what Kata decided.
//
// It exists so `cc-gpu kata check` is judged by Kata's code, not by our reading of it: the test suite runs every
// kata check fixture through katautils.LoadConfiguration (the function the shim calls) and asserts that our check
// agrees with the result. It prints one JSON object: {"ok": true, "resolved": PATH, "hypervisor": {...},
// "vfio_mode": ...} with the merged settings Kata uses, or {"ok": false, "error": MESSAGE} when Kata refuses the
// configuration. Exit status 0 in both cases; 2 for usage errors.
//
// With -spec-dir it is a CDI consumer instead, resolving the `cdi.k8s.io/` sandbox annotations with Kata's own
// config.WithCDI (the call the shim makes when it creates a sandbox without a PodResources socket), with the same
// interface as tests/cdi/consumer: the OCI spec is read from stdin and printed back with the devices injected.
//
// Usage: kata-oracle CONFIG.toml
//
//	kata-oracle -spec-dir DIR -annotations FILE < oci-spec.json > oci-spec.json
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	oci "github.com/opencontainers/runtime-spec/specs-go"

	dev "github.com/kata-containers/kata-containers/src/runtime/pkg/device/config"
	"github.com/kata-containers/kata-containers/src/runtime/pkg/katautils"
)

var vfioModes = map[dev.VFIOModeType]string{dev.VFIOModeVFIO: "vfio", dev.VFIOModeGuestKernel: "guest-kernel"}

type hypervisor struct {
	ColdPlugVFIO      string   `json:"cold_plug_vfio"`
	HotPlugVFIO       string   `json:"hot_plug_vfio"`
	PCIeRootPort      uint32   `json:"pcie_root_port"`
	PCIeSwitchPort    uint32   `json:"pcie_switch_port"`
	ConfidentialGuest bool     `json:"confidential_guest"`
	SevSnpGuest       bool     `json:"sev_snp_guest"`
	KernelParams      []string `json:"kernel_params"`
	EnableAnnotations []string `json:"enable_annotations"`
}

type result struct {
	OK         bool        `json:"ok"`
	Error      string      `json:"error,omitempty"`
	Resolved   string      `json:"resolved,omitempty"`
	Hypervisor *hypervisor `json:"hypervisor,omitempty"`
	VfioMode   string      `json:"vfio_mode,omitempty"`
}

func cdiMain() {
	specDir := flag.String("spec-dir", "", "CDI spec directory")
	annotationsFile := flag.String("annotations", "", "JSON file with the sandbox's annotations")
	flag.Parse()
	fail := func(format string, args ...interface{}) {
		fmt.Fprintf(os.Stderr, "kata-oracle: "+format+"\n", args...)
		os.Exit(1)
	}
	annotations := map[string]string{}
	if *annotationsFile != "" {
		raw, err := os.ReadFile(*annotationsFile)
		if err != nil {
			fail("reading annotations: %v", err)
		}
		if err := json.Unmarshal(raw, &annotations); err != nil {
			fail("decoding annotations: %v", err)
		}
	}
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading OCI spec: %v", err)
	}
	spec := &oci.Spec{}
	if err := json.Unmarshal(input, spec); err != nil {
		fail("decoding OCI spec: %v", err)
	}
	spec, err = dev.WithCDI(annotations, []string{*specDir}, spec)
	if err != nil {
		fail("%v", err)
	}
	out, _ := json.MarshalIndent(spec, "", "  ")
	fmt.Println(string(out))
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-spec-dir" {
		cdiMain()
		return
	}
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: kata-oracle CONFIG.toml")
		os.Exit(2)
	}
	resolved, config, err := katautils.LoadConfiguration(os.Args[1], true)
	out := result{OK: err == nil, Resolved: resolved}
	if err != nil {
		out.Error = err.Error()
	} else {
		h := config.HypervisorConfig
		params := []string{}
		for _, p := range h.KernelParams {
			if p.Value == "" {
				params = append(params, p.Key)
			} else {
				params = append(params, p.Key+"="+p.Value)
			}
		}
		out.Hypervisor = &hypervisor{
			ColdPlugVFIO: h.ColdPlugVFIO.String(), HotPlugVFIO: h.HotPlugVFIO.String(),
			PCIeRootPort: h.PCIeRootPort, PCIeSwitchPort: h.PCIeSwitchPort,
			ConfidentialGuest: h.ConfidentialGuest, SevSnpGuest: h.SevSnpGuest,
			KernelParams: params, EnableAnnotations: h.EnableAnnotations,
		}
		out.VfioMode = vfioModes[config.VfioMode]
	}
	data, _ := json.Marshal(out)
	fmt.Println(string(data))
}
