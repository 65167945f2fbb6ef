"""gpt2cli: reproduce GPT-2 (Radford et al. 2019) end to end, from Reddit links to zero-shot evaluation."""


def __getattr__(name: str) -> str:
    # Looked up on first use: importlib.metadata costs ~8 MiB and 30 ms, which the library users of
    # gpt2cli.bpe or gpt2cli.model should not pay.
    if name != "__version__":
        raise AttributeError(f"module 'gpt2cli' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("gpt2cli")
    except PackageNotFoundError:  # running from a source tree that is not installed
        value = "0.0.0+unknown"
    globals()["__version__"] = value
    return value
