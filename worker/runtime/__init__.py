"""See the package docstring of :mod:`worker`."""
