"""wsss_core."""
