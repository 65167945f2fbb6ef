"""The `gpt2 dedupe` stage: normalization, per-document filters, exact and near de-duplication, n-gram overlap."""
