"""Built-in numerical backends of spectrum, installed as the ``spectrum_backends`` package.

They are registered through the ``spectrum.backends`` entry-point group in pyproject.toml,
exactly as a third-party backend would be.
"""
