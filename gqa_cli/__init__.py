"""The `gqa` command line: the top layer, the one place that imports every package."""
