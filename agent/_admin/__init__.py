"""Fleet administration: root key, certificates, the systemd unit."""
