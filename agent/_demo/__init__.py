"""The demos: ``python -m agent._demo.fleet`` (make demo) and ``python -m agent._demo.local``."""
