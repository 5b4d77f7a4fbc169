"""shoal's performance suite (``make bench``). See docs/PERFORMANCE.md."""
