"""Reports: the JSON document, the HDF5 file (schema v1), and reading them back."""
