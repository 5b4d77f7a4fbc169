"""The node daemon: runtime, network, control socket, discovery, probe, migrator runner."""
