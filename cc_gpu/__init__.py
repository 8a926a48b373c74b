"""cc-gpu: a Kubernetes DRA driver that hands NVIDIA GPUs to confidential Kata Containers VMs through VFIO."""

__version__ = "0.1.0"
