"""spectrum: what the spectra of your training state say about stability.

The package is layered (see docs/design.md); the public API is in ``api.py``: ``core`` holds pure numerics and typed
results, ``io`` reads checkpoints, ``report`` writes and reads reports, and ``cli`` is
the only layer that touches typer and rich. Importing this package imports nothing heavy.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "ExitCode", "Analysis", "Trajectory", "analyze", "analyze_arrays",
           "analyze_matrix", "pseudospectral_radius", "trajectory"]

_API = {"Analysis", "Trajectory", "analyze", "analyze_arrays", "analyze_matrix",
        "pseudospectral_radius", "trajectory"}


def __getattr__(name: str):
    """The public API (spectrum_cli/api.py), imported on first use."""
    if name == "ExitCode":
        from spectrum_cli.core.errors import ExitCode

        return ExitCode
    if name in _API:
        from spectrum_cli import api

        return getattr(api, name)
    raise AttributeError(name)
