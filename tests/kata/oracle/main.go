// Command kata-oracle loads a Kata Containers configuration file with Kata's own loader and prints what Kata decided.
//
// It exists so `cc-gpu kata check` is judged by Kata's code, not by our reading of it: the test suite runs every
// kata check fixture through katautils.LoadConfiguration (the function the shim calls) and asserts that our check
// agrees with the result. It prints one JSON object: {"ok": true, "resolved": PATH, "hypervisor": {...},
// "vfio_mode": ...} with the merged settings Kata uses, or {"ok": false, "error": MESSAGE} when Kata refuses the
// configuration. Exit status 0 in both cases; 2 for usage errors.
//
// Usage: kata-oracle CONFIG.toml
package main

import (
	"encoding/json"
	"fmt"
	"os"

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

func main() {
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
