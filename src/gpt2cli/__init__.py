"""gpt2cli: reproduce GPT-2 (Radford et al. 2019) end to end, from Reddit links to zero-shot evaluation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gpt2cli")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
