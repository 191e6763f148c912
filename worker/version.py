"""SR's version, as ``sr --version`` and ``sr_build_info`` report it."""

from __future__ import annotations

__all__ = ["installed_version"]

#: The importable top-level package whose distribution carries SR's version.
_PACKAGE = "worker"
_UNKNOWN = "unknown"


def installed_version() -> str:
    """SR's version, from the installed distribution that provides the ``worker`` package.

    The distribution is found through its files, not by name, so renaming the distribution
    changes nothing here. Without installed metadata (a source tree on ``sys.path``) it is
    ``worker.__version__``, else ``"unknown"``. Scanning the installed distributions takes
    ~0.1 s: callers that ask often cache it.
    """
    from importlib import metadata

    import worker

    try:
        dists = metadata.packages_distributions().get(_PACKAGE, [])
    except (OSError, ValueError):  # unreadable metadata of some other distribution
        dists = []
    for dist in dists:
        try:
            return metadata.version(dist)
        except (metadata.PackageNotFoundError, OSError, ValueError):
            continue  # mapped to the package but its metadata is gone: try the next
    version = getattr(worker, "__version__", None)
    return version if isinstance(version, str) and version else _UNKNOWN
