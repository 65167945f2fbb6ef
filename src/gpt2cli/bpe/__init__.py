"""Byte-level BPE (paper section 2.2): the tokenizer, its trainer, and corpus-to-token-shard encoding."""

from gpt2cli.bpe.tokenizer import EOT, GPT2_PATTERN, Tokenizer

__all__ = ["EOT", "GPT2_PATTERN", "Tokenizer"]
