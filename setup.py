"""Package discovery (everything else is in pyproject.toml).

Every package under ``spectrum_cli/`` is found, not listed by hand (a hand list once left
``spectrum_cli.integrations`` out of the wheel); the top-level ``backends/`` folder is
installed as ``spectrum_backends`` so that it cannot collide with another ``backends``.
"""

from setuptools import find_packages, setup

BACKENDS = "backends"

packages = find_packages(include=["spectrum_cli", "spectrum_cli.*"])
packages += ["spectrum_backends" + name[len(BACKENDS):]
             for name in find_packages(include=[BACKENDS, BACKENDS + ".*"])]

setup(packages=packages, package_dir={"spectrum_backends": BACKENDS})
