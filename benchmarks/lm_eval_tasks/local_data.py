"""Offline data for the local copies of lm-eval's `lambada_openai` and `wikitext` tasks (used by bench_eval.py).

lm-eval downloads both datasets from the Hugging Face hub; these functions build the same documents from the
files in the shared data folder (``$GPT2_EVAL_DATA``, else ``../shared/data`` next to the repository):

* ``lambada_openai``: ``lambada/lambada_test.jsonl``, OpenAI's file, which is what ``EleutherAI/lambada_openai``
  (config ``default``) serves: one ``{"text": ...}`` per line, the text unchanged.
* ``wikitext_document_level``: ``wikitext-2/raw-reconstructed/wiki.test.raw`` cut into articles by the rule of
  ``EleutherAI/wikitext_document_level`` (config ``wikitext-2-raw-v1``): the file is split on ``"\\n"``; a line
  that, after ``"= = ="`` -> ``"==="`` and ``"= ="`` -> ``"=="`` and stripping, starts with ``"= "`` and ends with
  ``" ="`` (a level-1 `` = Title = `` heading) starts a new page; the lines gathered so far are joined with
  ``"\\n"`` and emitted when they hold any non-whitespace; the lines left at the end are always emitted.

The detokenizer and the per-document metrics are lm-eval's own, imported from the installed package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import datasets
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer

__all__ = ["lambada_openai", "process_results", "wikitext_detokenizer", "wikitext_document_level", "wikitext_pages"]

REPO = Path(__file__).resolve().parents[2]


def data_dir(kwargs: dict[str, Any]) -> Path:
    """``data_dir`` from the task's metadata, else ``$GPT2_EVAL_DATA``, else ``../shared/data``."""
    return Path(kwargs.get("data_dir") or os.environ.get("GPT2_EVAL_DATA") or REPO.parent / "shared" / "data")


def lambada_openai(**kwargs: Any) -> datasets.DatasetDict:
    path = data_dir(kwargs) / "lambada" / "lambada_test.jsonl"
    rows = [{"text": json.loads(line)["text"]} for line in path.read_text(encoding="utf-8").splitlines() if line]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def wikitext_pages(raw: str) -> list[str]:
    """The pages of a WikiText raw file, by the document-level rule in the module docstring."""
    pages: list[str] = []
    current: list[str] = []
    for line in raw.split("\n"):
        heading = line.replace("= = =", "===").replace("= =", "==").strip()
        if heading.startswith("= ") and heading.endswith(" ="):
            page = "\n".join(current)
            if page.strip():
                pages.append(page)
            current = []
        current.append(line)
    pages.append("\n".join(current))
    return pages


def wikitext_document_level(**kwargs: Any) -> datasets.DatasetDict:
    path = data_dir(kwargs) / "wikitext-2" / "raw-reconstructed" / "wiki.test.raw"
    pages = wikitext_pages(path.read_text(encoding="utf-8"))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([{"page": p} for p in pages])})
