"""transfer: a config-driven runner for cross-domain transfer-learning experiments."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("transfer-cli")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
