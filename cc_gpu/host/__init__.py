"""The host layer: the only code that reads or writes sysfs, /dev, /proc, NVML and netlink, through injected roots."""
