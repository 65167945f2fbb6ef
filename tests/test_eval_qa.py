from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.errors import Gpt2Error
from gpt2cli.eval.files import jsonl_rows
from gpt2cli.eval.generation import exact_match, f1
from gpt2cli.eval.qa import (
    CoqaTurn,
    NQItem,
    coqa_official_f1,
    evaluate_coqa,
    evaluate_nq_open,
    nq_prompt,
    nq_shots,
    read_coqa,
    read_nq_open,
)
from gpt2cli.model import GPT, GPTConfig
from tests.conftest import greedy_first_line, shared_data

N_CTX = 128
MAX_NEW = 6


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tokenizer: Tokenizer) -> GPT:
    """A random model with large weights: unlike a freshly initialized one, it does not just repeat the last
    token, so its answers vary; a larger newline embedding makes some of them end at a newline."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=N_CTX, vocab_size=tokenizer.vocab_size))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
        model.transformer.wte.weight[tokenizer.encode("\n")] *= 4
    return model.eval()


NEWLINE_STOPS: list[str] = []  # prompts whose plain answer ended at a newline


def plain_answer(model: GPT, tokenizer: Tokenizer, prompt: str) -> str:
    """Greedy argmax over full forward passes until a newline or <|endoftext|>; the first line, stripped."""
    answer, newline = greedy_first_line(model, tokenizer, prompt, N_CTX, MAX_NEW)
    if newline:
        NEWLINE_STOPS.append(prompt)
    return answer


# -- NQ-open -----------------------------------------------------------------------------------------------


def nq_items(texts: list[str], n: int = 14) -> list[NQItem]:
    rng = random.Random(1)
    words = " ".join(texts).lower().split()
    items = []
    for i in range(n):
        start = rng.randrange(len(words) - 12)
        items.append(NQItem(" ".join(words[start : start + rng.randint(4, 10)]), (f"answer {i}", words[start])))
    return items


def test_read_nq_open_real_file():
    items = read_nq_open(shared_data("nq-open", "NQ-open.dev.jsonl"))
    assert len(items) == 3610
    assert items[0] == NQItem(
        "when was the last time anyone was on the moon", ("14 December 1972 UTC", "December 1972")
    )
    assert all(item.question and item.answers for item in items)


def test_read_nq_open(tmp_path: Path):
    path = tmp_path / "nq.jsonl"
    path.write_text('{"question": "who is it", "answer": ["me", "you"]}\n\n{"question": "b", "answer": ["c"]}\n')
    assert read_nq_open(path) == [NQItem("who is it", ("me", "you")), NQItem("b", ("c",))]
    for bad in (
        '{"question": "b", "answer": "c"}',
        '{"question": "b"}',
        '{"question": "", "answer": ["c"]}',
        '{"question": "b", "answer": ["c", ""]}',  # an empty answer would match every empty prediction
        '{"question": "b", "answer": [" "]}',
        "{",
    ):
        path.write_text('{"question": "a", "answer": ["b"]}\n' + bad + "\n")
        with pytest.raises(Gpt2Error, match=r"nq\.jsonl:2:"):
            read_nq_open(path)


def test_nq_prompt_uses_a_fixed_selection_without_the_question():
    pool = [NQItem(f"question {i}", (f"answer {i}", "other")) for i in range(30)]
    candidates = nq_shots(pool, 3, seed=5)
    assert candidates == nq_shots(pool, 3, seed=5) != nq_shots(pool, 3, seed=6)
    assert len(set(candidates)) == 4
    outside = next(item for item in pool if item not in candidates)
    expected = "".join(f"Q: {c.question}\nA: {c.answers[0]}\n" for c in candidates[:3])
    assert nq_prompt(outside, candidates, 3) == expected + f"Q: {outside.question}\nA:"
    with pytest.raises(Gpt2Error, match=r"nq-open: 3 different pairs, but 8 example pairs per prompt need 9"):
        nq_shots(pool[:3], 8, seed=5)  # a short file: never prompts with fewer examples than the run records
    inside = candidates[1]
    prompt = nq_prompt(inside, candidates, 3)
    assert prompt.count("Q: ") == 4 and prompt.count(inside.question) == 1 and prompt.endswith(f"{inside.question}\nA:")
    for c in candidates:
        if c != inside:
            assert f"Q: {c.question}\nA: {c.answers[0]}\n" in prompt


def test_repeated_questions_never_shorten_the_examples():
    """A question the file holds twice is left out of its own prompt once for both copies: the selection holds
    different questions, so every prompt still has exactly ``shots`` example pairs, none of them its own."""
    pool = [NQItem(f"question {i}", (f"answer {i}",)) for i in range(12)]
    pool = pool + pool[:6]
    for seed in range(20):
        candidates = nq_shots(pool, 8, seed)
        assert candidates == nq_shots(pool, 8, seed) and len({c.question for c in candidates}) == 9
        for item in pool:
            prompt = nq_prompt(item, candidates, 8)
            assert prompt.count("Q: ") == 9 and prompt.count(f"Q: {item.question}\n") == 1, (seed, item)
    with pytest.raises(Gpt2Error, match=r"nq-open: 8 different pairs, but 8 example pairs per prompt need 9"):
        nq_shots(pool[:8] + pool[:8], 8, seed=0)


def test_evaluate_nq_open_matches_plain_loop(model: GPT, tokenizer: Tokenizer, texts: list[str]):
    items = nq_items(texts)
    candidates = nq_shots(items, 2, seed=0)
    NEWLINE_STOPS.clear()
    plain = [plain_answer(model, tokenizer, nq_prompt(item, candidates, 2)) for item in items]
    assert 0 < len(NEWLINE_STOPS) < len(items)  # some answers end at a newline, some run to the length limit
    # give some questions the model's own answer (in other case and punctuation) so that some are right
    items = [
        NQItem(it.question, (*it.answers, p.upper() + ".")) if i % 3 == 0 and p else it
        for i, (it, p) in enumerate(zip(items, plain, strict=True))
    ]
    result = evaluate_nq_open(model, tokenizer, items, batch_size=4, shots=2, max_new_tokens=MAX_NEW, seed=0)
    assert list(result.predictions) == plain
    expected = 100 * sum(exact_match(p, it.answers) for p, it in zip(plain, items, strict=True)) / len(items)
    assert result.scores["exact_match"] == pytest.approx(expected) and expected > 0
    report = result.as_dict()
    assert report["task"] == "nq-open" and report["examples"] == len(items) and report["shots"] == 2
    assert report["new_tokens"] == MAX_NEW
    assert len(report["samples"]) == 3 and report["samples"][0]["prediction"] == plain[0]
    json.dumps(report)
    # a slice evaluated with the whole set as the pool answers as the prefix of the whole run
    part = evaluate_nq_open(
        model, tokenizer, items[:5], pool=items, batch_size=2, shots=2, max_new_tokens=MAX_NEW, seed=0
    )
    assert list(part.predictions) == plain[:5]


# -- CoQA --------------------------------------------------------------------------------------------------


def coqa_story(story_id: str, story: str, turns: list[tuple[str, str, list[str]]]) -> dict[str, Any]:
    """A story in the layout of coqa-dev-v1.0.json: (question, answer, additional answers) per turn."""
    return {
        "source": "mctest",
        "id": story_id,
        "filename": f"{story_id}.txt",
        "story": story,
        "questions": [{"input_text": q, "turn_id": t + 1} for t, (q, _, _) in enumerate(turns)],
        "answers": [
            {"span_start": 0, "span_end": 4, "span_text": story[:4], "input_text": a, "turn_id": t + 1}
            for t, (_, a, _) in enumerate(turns)
        ],
        "additional_answers": {
            str(k): [{"input_text": extra[k], "turn_id": t + 1} for t, (_, _, extra) in enumerate(turns)]
            for k in range(len(turns[0][2]))
        },
        "name": f"{story_id}.txt",
    }


def write_coqa(path: Path, stories: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"version": "1.0", "data": stories}, indent=2), encoding="utf-8")
    return path


def coqa_stories(texts: list[str], last_answers: tuple[str, str] = ("yes", "no")) -> list[dict[str, Any]]:
    long_story = " ".join(texts[0].split()[:150])  # longer than the context: its start is cut
    short_story = "Anna had a red kite.\nShe flew it on the hill with her brother."
    return [
        coqa_story(
            "s1",
            short_story,
            [
                ("What did Anna have?", "a red kite", ["a kite", "red kite", "kite"]),
                ("Where did she fly it?", "on the hill", ["the hill", "hill", "on a hill"]),
                ("With whom?", last_answers[0], ["her brother", "brother", "with her brother"]),
            ],
        ),
        coqa_story(
            "s2",
            long_story,
            [
                ("What is this about?", "a council", ["council", "the council", "bike lanes"]),
                ("Is it long?", last_answers[1], ["yes", "yes", "yes"]),
            ],
        ),
    ]


def test_read_coqa(tmp_path: Path, texts: list[str]):
    turns = read_coqa(write_coqa(tmp_path / "coqa-dev-v1.0.json", coqa_stories(texts)))
    assert len(turns) == 5
    assert turns[0] == CoqaTurn(
        "s1",
        "Anna had a red kite.\nShe flew it on the hill with her brother.",
        (),
        "What did Anna have?",
        ("a red kite", "a kite", "red kite", "kite"),
    )
    assert turns[2].history == (("What did Anna have?", "a red kite"), ("Where did she fly it?", "on the hill"))
    assert turns[3].story_id == "s2" and turns[3].history == ()


def test_read_coqa_errors_name_file_and_place(tmp_path: Path, texts: list[str]):
    stories = coqa_stories(texts)
    stories[1]["answers"].pop()
    with pytest.raises(Gpt2Error, match=r"bad\.json: data\[1\] \(id 's2'\): 'answers'"):
        read_coqa(write_coqa(tmp_path / "bad.json", stories))
    stories = coqa_stories(texts)
    stories[0]["questions"][2]["turn_id"] = 7
    with pytest.raises(Gpt2Error, match=r"bad\.json: data\[0\] \(id 's1'\): questions\[2\] has turn_id 7"):
        read_coqa(write_coqa(tmp_path / "bad.json", stories))
    stories = coqa_stories(texts)
    del stories[0]["additional_answers"]["1"][0]["input_text"]
    with pytest.raises(Gpt2Error, match=r"additional_answers\['1'\]\[0\] has no 'input_text'"):
        read_coqa(write_coqa(tmp_path / "bad.json", stories))
    (tmp_path / "bad.json").write_text('{"data": [\n{"story": }]}')
    with pytest.raises(Gpt2Error, match=r"bad\.json:2: not JSON"):
        read_coqa(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text('{"version": "1.0"}')
    with pytest.raises(Gpt2Error, match=r"bad\.json: not a CoQA file"):
        read_coqa(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text("[" * 100_000 + "]" * 100_000)  # deeper than the parser goes
    with pytest.raises(Gpt2Error, match=r"bad\.json: not JSON \(maximum recursion depth"):
        read_coqa(tmp_path / "bad.json")
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(Gpt2Error, match=r"bad\.jsonl:2: not JSON \(maximum recursion depth"):
        list(jsonl_rows(tmp_path / "bad.jsonl"))


def test_coqa_official_f1():
    golds = ["red car", "car", "blue car"]
    assert f1("car", golds) == 1.0
    assert coqa_official_f1("car", golds) == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert coqa_official_f1("car", ["the car"]) == 1.0


def test_evaluate_coqa_matches_plain_loop(model: GPT, tokenizer: Tokenizer, texts: list[str], tmp_path: Path):
    def prompt(turn: CoqaTurn) -> str:  # written out independently of the module
        lines = [f"Q: {q}\nA: {a}\n" for q, a in turn.history]
        return turn.story + "\n\n" + "".join(lines) + "Q: " + turn.question + "\nA:"

    turns = read_coqa(write_coqa(tmp_path / "coqa.json", coqa_stories(texts)))
    NEWLINE_STOPS.clear()
    plain = [plain_answer(model, tokenizer, prompt(t)) for t in turns]
    assert NEWLINE_STOPS
    # the last turns' answers do not enter any prompt: make them the model's own answers, so F1 > 0
    path = write_coqa(tmp_path / "coqa.json", coqa_stories(texts, (plain[2] + " x", plain[4])))
    turns = read_coqa(path)
    assert len(tokenizer.encode(prompt(turns[3]))) > N_CTX  # the long story is cut
    result = evaluate_coqa(model, tokenizer, turns, batch_size=3, max_new_tokens=MAX_NEW)
    assert list(result.predictions) == plain
    pairs = list(zip(plain, turns, strict=True))
    # the headline F1 is the official script's, as the paper's 55; the best over all answers is kept beside it
    assert result.scores["f1"] == pytest.approx(100 * sum(coqa_official_f1(p, t.answers) for p, t in pairs) / 5)
    assert result.scores["f1"] >= 20  # at least the last turn of the second story is right
    assert result.scores["f1_best_answer"] == pytest.approx(100 * sum(f1(p, t.answers) for p, t in pairs) / 5)
    assert result.scores["f1_best_answer"] > result.scores["f1"]  # "x" in the first story's last answer costs
    assert result.scores["exact_match"] == pytest.approx(100 * sum(exact_match(p, t.answers) for p, t in pairs) / 5)
    report = result.as_dict()
    assert report["task"] == "coqa" and report["stories"] == 2 and len(report["samples"]) == 3
    assert report["new_tokens"] == MAX_NEW
    json.dumps(report)
