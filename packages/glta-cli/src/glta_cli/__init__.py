"""glta_cli: the ``glta`` command line over glta-graph, glta-align and glta-gllm."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("glta-cli")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
