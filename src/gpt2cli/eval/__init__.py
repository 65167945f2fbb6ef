"""Zero-shot evaluation of GPT-2 models (paper section 3)."""
