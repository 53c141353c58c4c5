"""nnspec: a declarative network-spec compiler."""

__version__ = "0.1.0"
