"""Training support: built-in sample data sets, user data files, and batching.

`datasets` makes the sample sets that `nnspec train` knows by name; `loaders` reads the
user's own CSV/NPZ/NPY files and turns every malformed file into a `DataError` that the
CLI can print as a plain sentence instead of a traceback.
"""
