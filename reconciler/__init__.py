"""reconciler: a GitOps reconciliation daemon for everything that is not Kubernetes."""

__version__ = "0.1.0"
