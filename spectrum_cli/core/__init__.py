"""Pure numerics and typed results. Nothing here imports typer, rich, torch or h5py."""
