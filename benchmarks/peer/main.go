// Command drapeer is a minimal DRA kubelet plugin on the upstream helper library
// (k8s.io/dynamic-resource-allocation/kubeletplugin), the peer that benchmarks/real_apiserver.py measures cc-gpu
// against. It does what the reference example driver does with simulated devices, and nothing more: it publishes
// one ResourceSlice of N simulated GPUs through the helper's PublishResources, and for each prepared claim writes a
// small CDI spec file (one CDI device per allocated device, with an environment variable naming it) and a
// checkpoint of what is prepared (written and synced, then renamed), and returns the CDI ids. Unprepare removes
// both. It touches no sysfs and no device node.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
)

const cdiVendor = "k8s.gpu.example.com"
const cdiClass = "gpu"

type driver struct {
	name       string
	nodeName   string
	cdiRoot    string
	checkpoint string
	devices    map[string]bool

	mu       sync.Mutex
	prepared map[types.UID][]string // claim UID -> device names
	cancel   context.CancelFunc
}

type cdiSpec struct {
	CDIVersion string      `json:"cdiVersion"`
	Kind       string      `json:"kind"`
	Devices    []cdiDevice `json:"devices"`
}

type cdiDevice struct {
	Name           string         `json:"name"`
	ContainerEdits map[string]any `json:"containerEdits"`
}

func main() {
	var d driver
	var kubeconfig, pluginDir, registryDir string
	var count int
	flag.StringVar(&d.name, "driver-name", "gpu.example.com", "DRA driver name")
	flag.StringVar(&d.nodeName, "node-name", "", "node this plugin runs on")
	flag.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file")
	flag.StringVar(&pluginDir, "plugin-dir", "", "plugin data directory (DRA socket, checkpoint)")
	flag.StringVar(&registryDir, "registry-dir", "", "kubelet plugin registry directory")
	flag.StringVar(&d.cdiRoot, "cdi-root", "", "directory for CDI spec files")
	flag.IntVar(&count, "devices", 8, "number of simulated devices")
	klog.InitFlags(nil)
	flag.Parse()
	if err := run(&d, kubeconfig, pluginDir, registryDir, count); err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		os.Exit(1)
	}
}

func run(d *driver, kubeconfig, pluginDir, registryDir string, count int) error {
	if d.nodeName == "" || kubeconfig == "" || pluginDir == "" || registryDir == "" || d.cdiRoot == "" {
		return errors.New("--node-name, --kubeconfig, --plugin-dir, --registry-dir and --cdi-root are required")
	}
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	for _, dir := range []string{pluginDir, registryDir, d.cdiRoot} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return err
		}
	}
	d.checkpoint = filepath.Join(pluginDir, "checkpoint.json")
	d.prepared = map[types.UID][]string{}
	d.devices = map[string]bool{}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	ctx, d.cancel = context.WithCancel(ctx)

	helper, err := kubeletplugin.Start(ctx, d,
		kubeletplugin.DriverName(d.name),
		kubeletplugin.NodeName(d.nodeName),
		kubeletplugin.KubeClient(client),
		kubeletplugin.PluginDataDirectoryPath(pluginDir),
		kubeletplugin.RegistrarDirectoryPath(registryDir),
		kubeletplugin.HealthService(false),
	)
	if err != nil {
		return fmt.Errorf("start kubelet plugin: %w", err)
	}
	defer helper.Stop()

	devices := make([]resourceapi.Device, 0, count)
	for i := range count {
		name := fmt.Sprintf("gpu-%d", i)
		d.devices[name] = true
		devices = append(devices, resourceapi.Device{
			Name: name,
			Attributes: map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
				"index":         {IntValue: ptr.To(int64(i))},
				"uuid":          {StringValue: ptr.To(fmt.Sprintf("gpu-%s-%08d", d.nodeName, i))},
				"model":         {StringValue: ptr.To("LATEST-GPU-MODEL")},
				"driverVersion": {VersionValue: ptr.To("1.0.0")},
			},
			Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
				"memory": {Value: resource.MustParse("80Gi")},
			},
		})
	}
	resources := resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{
		d.nodeName: {Slices: []resourceslice.Slice{{Devices: devices}}},
	}}
	if err := helper.PublishResources(ctx, resources); err != nil {
		return fmt.Errorf("publish resources: %w", err)
	}
	<-ctx.Done()
	return nil
}

func (d *driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	result := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	for _, claim := range claims {
		result[claim.UID] = d.prepare(claim)
	}
	if err := d.writeCheckpoint(); err != nil {
		return nil, err
	}
	return result, nil
}

func (d *driver) prepare(claim *resourceapi.ResourceClaim) kubeletplugin.PrepareResult {
	if claim.Status.Allocation == nil {
		return kubeletplugin.PrepareResult{Err: fmt.Errorf("claim %s/%s is not allocated", claim.Namespace, claim.Name)}
	}
	inUse := map[string]types.UID{}
	for uid, names := range d.prepared {
		for _, name := range names {
			inUse[name] = uid
		}
	}
	var out []kubeletplugin.Device
	var names []string
	spec := cdiSpec{CDIVersion: "0.6.0", Kind: cdiVendor + "/" + cdiClass}
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver != d.name {
			continue
		}
		if r.Pool != d.nodeName || !d.devices[r.Device] {
			return kubeletplugin.PrepareResult{Err: fmt.Errorf("device %s/%s is not on this node", r.Pool, r.Device)}
		}
		if owner, ok := inUse[r.Device]; ok && owner != claim.UID {
			return kubeletplugin.PrepareResult{Err: fmt.Errorf("device %s is in use by claim %s", r.Device, owner)}
		}
		cdiName := fmt.Sprintf("%s-%s", claim.UID, r.Device)
		spec.Devices = append(spec.Devices, cdiDevice{Name: cdiName, ContainerEdits: map[string]any{
			"env": []string{fmt.Sprintf("GPU_DEVICE_%s=%s", r.Device[len("gpu-"):], r.Device)},
		}})
		names = append(names, r.Device)
		out = append(out, kubeletplugin.Device{
			Requests: []string{r.Request}, PoolName: r.Pool, DeviceName: r.Device,
			CDIDeviceIDs: []string{fmt.Sprintf("%s/%s=%s", cdiVendor, cdiClass, cdiName)},
		})
	}
	data, err := json.Marshal(spec)
	if err == nil {
		err = writeAtomically(d.specPath(claim.UID), data)
	}
	if err != nil {
		return kubeletplugin.PrepareResult{Err: fmt.Errorf("CDI spec: %w", err)}
	}
	d.prepared[claim.UID] = names
	return kubeletplugin.PrepareResult{Devices: out}
}

func (d *driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	result := make(map[types.UID]error, len(claims))
	for _, claim := range claims {
		err := os.Remove(d.specPath(claim.UID))
		if errors.Is(err, os.ErrNotExist) {
			err = nil
		}
		if err == nil {
			delete(d.prepared, claim.UID)
		}
		result[claim.UID] = err
	}
	if err := d.writeCheckpoint(); err != nil {
		return nil, err
	}
	return result, nil
}

func (d *driver) HandleError(ctx context.Context, err error, msg string) {
	klog.FromContext(ctx).Error(err, msg)
	if !errors.Is(err, kubeletplugin.ErrRecoverable) {
		d.cancel()
	}
}

func (d *driver) WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error {
	return kubeletplugin.ErrHealthNotSupported
}

func (d *driver) specPath(uid types.UID) string {
	return filepath.Join(d.cdiRoot, fmt.Sprintf("%s-claim_%s.json", cdiVendor, uid))
}

func (d *driver) writeCheckpoint() error {
	data, err := json.Marshal(d.prepared)
	if err != nil {
		return err
	}
	return writeAtomically(d.checkpoint, data)
}

// writeAtomically writes, syncs and renames, so a crash leaves the old file or the new one.
func writeAtomically(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
