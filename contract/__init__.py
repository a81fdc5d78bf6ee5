"""Torch-free contract shared by ui/, scheduler/ and training/: the task's parameters with one set of bounds, the
settings, the progress events, the catalog of recipes and model families."""
