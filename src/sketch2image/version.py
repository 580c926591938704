"""The package version (its own module: the package's __init__ exports the model lazily, which imports this)."""

__version__ = "0.2.0"
