"""spectrum: what the spectra of your training state say about stability.

The package is layered (see docs/design.md): ``core`` holds pure numerics and typed
results, ``io`` reads checkpoints, ``report`` writes and reads reports, and ``cli`` is
the only layer that touches typer and rich. Importing this package imports nothing heavy.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "ExitCode"]


def __getattr__(name: str):
    if name == "ExitCode":
        from spectrum_cli.core.errors import ExitCode

        return ExitCode
    raise AttributeError(name)
