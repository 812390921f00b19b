"""Data shipped with the package: the demo caller's recording."""
