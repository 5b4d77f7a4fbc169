"""The data directory: chunk store, publish, install, keys and the saved ledger."""
