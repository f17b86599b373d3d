"""spectrum: what the spectra of your training state say about stability.

The package is layered (see docs/design.md); the public API is in ``api.py``: ``core``
holds pure numerics and typed results, ``io`` reads checkpoints, ``runs`` runs analyses,
``report`` writes and reads reports, and ``cli`` is the only layer that touches typer
and rich. Importing this package imports nothing heavy:
the API is imported on first use (``spectrum_cli.analyze``), and ``dir(spectrum_cli)``
lists it without importing it.
"""

__version__ = "0.1.0"

#: The public functions and classes of spectrum_cli/api.py.
_API = ("Analysis", "Trajectory", "analyze", "analyze_arrays", "analyze_matrix",
        "candidates", "pseudospectral_radius", "trajectory", "watch")
#: The exit codes and the errors a user can cause (spectrum_cli/core/errors.py: light).
_ERRORS = ("ExitCode", "SpectrumError", "UsageError", "InputError",
           "CheckpointNotFoundError")

__all__ = ["__version__", *_ERRORS, *_API]


def __getattr__(name: str):
    """The public API (spectrum_cli/api.py), imported on first use."""
    if name in _ERRORS:
        from spectrum_cli.core import errors

        return getattr(errors, name)
    if name in _API:
        from spectrum_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'spectrum_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    """What is here and what :func:`__getattr__` gives (tab completion), without
    importing the API."""
    return sorted(set(globals()) | set(__all__))
