from __future__ import annotations

import json
from pathlib import Path

from gpt2cli.artifacts import Store
from tests.conftest import SHARED_DATA, run_cli, shared_data


def test_zero_shot_on_real_data(model_home: Path):
    shared_data("ptb", "ptb.test.txt")
    shared_data("lambada", "lambada_test.jsonl")
    result = run_cli(model_home, "eval", "zero-shot", "--task", "ptb", "--task", "lambada", "--limit", "40",
                     "--data-dir", str(SHARED_DATA), "--dtype", "float32", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["summary"]
    assert summary["ptb_ppl"] > summary["ptb_token_ppl"] > 1  # more tokens than words: per-word ppl is larger
    assert 0 <= summary["lambada_acc"] <= 100 and 0 <= summary["lambada_acc_stopword_filter"] <= 100
    metrics = json.loads(Store(model_home).resolve("eval").file("metrics.json").read_text())
    first_lines = (SHARED_DATA / "ptb" / "ptb.test.txt").read_text().split("\n")[:40]
    assert metrics["results"]["ptb"]["words"] == sum(len(line.split()) + 1 for line in first_lines)
    assert metrics["results"]["lambada"]["examples"] == 40
    table = run_cli(model_home, "eval", "zero-shot", "--task", "ptb", "--limit", "40", "--data-dir", str(SHARED_DATA),
                    "--dtype", "float32")  # fmt: skip
    assert table.returncode == 0 and "ptb ppl" in table.stdout


def test_bad_tasks_and_missing_data(model_home: Path, tmp_path: Path):
    unknown = run_cli(model_home, "eval", "zero-shot", "--task", "squad")
    assert unknown.returncode == 2 and "unknown task 'squad'; tasks: wikitext2" in unknown.stderr
    missing = run_cli(model_home, "eval", "zero-shot", "--task", "ptb", "--data-dir", str(tmp_path))
    assert missing.returncode == 1
    assert f"{tmp_path}/ptb/ptb.test.txt not found; get it from" in missing.stderr
    nothing = run_cli(model_home, "eval", "zero-shot", "--data-dir", str(tmp_path))
    assert nothing.returncode == 2 and "no task has its data" in nothing.stderr


def write_task_files(root: Path) -> None:
    """Small files in each dataset's original format, under the names the stage looks for."""
    words = ["the", "cat", "sat", "on", "the", "mat", "while", "a", "dog", "ran", "to", "the", "park"]  # fmt: skip
    (root / "enwik8").mkdir()
    (root / "enwik8" / "enwik8").write_bytes(("<page><title>Cat</title> " + " ".join(words) * 80).encode())
    (root / "text8").mkdir()
    (root / "text8" / "text8").write_text(" ".join(words * 100))
    (root / "1bw").mkdir()
    (root / "1bw" / "news.en.heldout-00000-of-00050").write_text(
        "The cat 's toy was n't there .\nA dog , a bird and a tree .\nThey said `` hello '' to us .\n"
    )
    (root / "cbt").mkdir()
    for kind in ("CN", "NE"):
        candidates = ["cat", "dog", "mat", "park", "bird", "tree", "toy", "hat", "sun", "cup"]
        example = [f"{i} The {candidates[i % 10]} sat on the {candidates[(i + 3) % 10]} ." for i in range(1, 21)]
        example.append("21 The XXXXX ran to the park .\tdog\t\t" + "|".join(candidates))
        (root / "cbt" / f"cbtest_{kind}_valid_2000ex.txt").write_text("\n".join(example * 1) + "\n\n")
    (root / "coqa").mkdir()
    story = {"id": "s1", "story": "The cat sat on the mat. The dog ran to the park.",
             "questions": [{"input_text": "Where did the cat sit?", "turn_id": 1},
                           {"input_text": "Who ran?", "turn_id": 2}],
             "answers": [{"input_text": "on the mat", "turn_id": 1}, {"input_text": "the dog", "turn_id": 2}],
             "additional_answers": {}}  # fmt: skip
    (root / "coqa" / "coqa-dev-v1.0.json").write_text(json.dumps({"version": "1.0", "data": [story]}))
    (root / "cnn-dm").mkdir()
    rows = [{"article": "The cat sat on the mat. " * 8, "highlights": "A cat sat.", "id": str(i)} for i in range(3)]
    (root / "cnn-dm" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "wmt14").mkdir()
    (root / "wmt14" / "newstest2014.en").write_text("The cat sat.\nThe dog ran.\nA bird sang.\nThe sun rose.\n")
    (root / "wmt14" / "newstest2014.fr").write_text("Le chat.\nLe chien.\nUn oiseau.\nLe soleil.\n")
    (root / "nq-open").mkdir()
    qa = [{"question": f"who sat on mat {i}", "answer": ["the cat"]} for i in range(10)]
    (root / "nq-open" / "NQ-open.dev.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa))


def test_every_task_of_table3_and_section3_runs_from_local_files(model_home: Path, tmp_path: Path):
    write_task_files(tmp_path)
    tasks = ["enwik8", "text8", "1bw", "cbt-cn", "cbt-ne", "coqa", "cnn-dm", "wmt14-en-fr", "wmt14-fr-en", "nq-open"]
    result = run_cli(model_home, "eval", "zero-shot", *(a for t in tasks for a in ("--task", t)), "--limit", "3",
                     "--data-dir", str(tmp_path), "--dtype", "float32", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads(Store(model_home).resolve("eval").file("metrics.json").read_text())["results"]
    assert set(metrics) == set(tasks)
    assert metrics["enwik8"]["bytes"] == 3000 and 0 < metrics["enwik8"]["bits_per_byte"] < 20
    assert metrics["text8"]["chars"] == 3000 and 0 < metrics["text8"]["bits_per_char"] < 20
    assert metrics["1bw"]["words"] == 9 + 10 + 9 and metrics["1bw"]["ppl"] > 1
    assert all(0 <= metrics[t]["acc"] <= 100 and metrics[t]["examples"] == 1 for t in ("cbt-cn", "cbt-ne"))
    assert metrics["coqa"]["examples"] == 2 and 0 <= metrics["coqa"]["f1"] <= 100
    assert metrics["cnn-dm"]["examples"] == 3 and {"rouge1", "rouge2", "rougeL"} <= set(metrics["cnn-dm"])
    assert metrics["wmt14-en-fr"]["examples"] == 3 and metrics["wmt14-fr-en"]["bleu"] >= 0
    assert metrics["nq-open"]["examples"] == 3 and 0 <= metrics["nq-open"]["exact_match"] <= 100
    (tmp_path / "wmt14" / "newstest2014.fr").unlink()
    missing = run_cli(model_home, "eval", "zero-shot", "--task", "wmt14-en-fr", "--data-dir", str(tmp_path))
    assert missing.returncode == 1 and "newstest2014.fr not found" in missing.stderr


def test_winograd_from_the_real_collection(model_home: Path):
    shared_data("winograd", "WSCollection.xml")
    result = run_cli(model_home, "eval", "zero-shot", "--task", "wsc273", "--limit", "20", "--data-dir",
                     str(SHARED_DATA), "--dtype", "float32", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["summary"]
    assert 0 <= summary["wsc273_acc_full"] <= 100 and 0 <= summary["wsc273_acc_partial"] <= 100
