"""Real servers for plugforge's tests and demo: a Kubernetes control plane, an OCI registry,
a Git server and brokers, each started on loopback and stopped cleanly. Not shipped in images."""
