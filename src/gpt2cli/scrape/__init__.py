"""The `scrape-reddit` stage: turning fetched web pages into WebText-style documents."""

from gpt2cli.scrape.extract import extract, extract_text

__all__ = ["extract", "extract_text"]
