"""The mpq version, in a module of its own so that any part of quant can record it without importing the
package's ``__init__`` (which imports the bundle loader: that would be an import cycle)."""

__version__ = "0.1.0"
