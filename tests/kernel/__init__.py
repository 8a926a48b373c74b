"""Real-kernel tests: the binder against Linux's own vfio-pci in a QEMU guest with an emulated IOMMU."""
