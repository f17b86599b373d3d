"""A third-party plugin distribution for spectrum's tests: one file per extension point,
using only spectrum's documented protocols. It is put on sys.path, never installed."""
