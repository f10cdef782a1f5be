"""cimsnap: Windows container layers as CimFS images, for containerd, on any OS."""

__version__ = "0.1.0"
