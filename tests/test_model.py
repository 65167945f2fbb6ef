from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.model import GPT, GPTConfig, config_for, hf_config

# PAPER.md, Table 2: real parameter counts (tied output embedding, biases, final LayerNorm included).
PAPER_COUNTS = {"124M": 124_439_808, "355M": 354_823_168, "774M": 774_030_080, "1558M": 1_557_611_200}


def count_without_building(config: GPTConfig) -> int:
    with torch.device("meta"):
        return GPT(config).num_params()


@pytest.mark.parametrize("size", PAPER_COUNTS)
def test_parameter_counts_match_the_paper(size):
    assert count_without_building(config_for(size)) == PAPER_COUNTS[size]
    assert count_without_building(config_for(size, pad_vocab_multiple=1)) == PAPER_COUNTS[size]


def test_aliases_and_unknown_size():
    assert config_for("117M") == config_for("124M") and config_for("1542M") == config_for("1558M")
    with pytest.raises(UsageError, match="unknown model size"):
        config_for("7B")


def test_padding_is_invisible():
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=16, vocab_size=100, pad_vocab_multiple=64)
    model = GPT(config)
    assert model.transformer.wte.weight.shape[0] == 128
    idx = torch.randint(0, 100, (3, 16))
    assert model(idx).shape == (3, 16, 100)
    unpadded = GPT(GPTConfig(**{**config.__dict__, "pad_vocab_multiple": 1}))
    unpadded.load_hf_state_dict(model.hf_state_dict())
    torch.testing.assert_close(unpadded(idx), model(idx), rtol=0, atol=1e-6)


def test_init_follows_gpt2():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=256, n_ctx=512, vocab_size=1000))
    std = lambda t: t.float().std().item()  # noqa: E731
    assert std(model.transformer.wte.weight) == pytest.approx(0.02, rel=0.05)
    assert std(model.transformer.wpe.weight) == pytest.approx(0.01, rel=0.05)
    assert std(model.transformer.h[0].attn.c_attn.weight) == pytest.approx(0.02, rel=0.05)
    assert std(model.transformer.h[0].mlp.c_proj.weight) == pytest.approx(0.02 / 8**0.5, rel=0.05)
    assert std(model.transformer.h[0].attn.c_proj.weight) == pytest.approx(0.02 / 8**0.5, rel=0.05)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.h[0].ln_1.eps == 1e-5


def test_context_longer_than_model_is_an_error():
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, n_ctx=4, vocab_size=10))
    with pytest.raises(Gpt2Error, match="longer than the model's context"):
        model(torch.zeros(1, 5, dtype=torch.long))


def test_causality():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=16, vocab_size=50)).eval()
    a = torch.randint(0, 50, (1, 10))
    b = a.clone()
    b[0, 7:] = (b[0, 7:] + 1) % 50
    torch.testing.assert_close(model(a)[:, :7], model(b)[:, :7])


transformers = pytest.importorskip("transformers", reason="transformers (a dev dependency) is needed for interop")


def small_config() -> GPTConfig:
    return GPTConfig(n_layer=2, n_head=4, n_embd=64, n_ctx=32, vocab_size=300)


def test_logits_equal_hugging_face_both_ways(tmp_path: Path):
    torch.manual_seed(0)
    ours = GPT(small_config()).eval()
    # make LayerNorms and biases non-trivial so a missed transpose or tensor would show
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    ours.save(tmp_path / "ours")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    idx = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        assert (hf(idx).logits - ours(idx)).abs().max().item() < 1e-4
    # and back: a checkpoint saved by transformers loads into ours
    hf_model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(**{k: v for k, v in hf_config(small_config()).items() if k != "gpt2cli"})
    ).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    loaded = GPT.load(tmp_path / "hf").eval()
    with torch.no_grad():
        assert (hf_model(idx).logits - loaded(idx)).abs().max().item() < 1e-4
    # the older pickle format, read with weights_only=True
    (tmp_path / "hf-bin").mkdir()
    (tmp_path / "hf-bin" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    torch.save(hf_model.state_dict(), tmp_path / "hf-bin" / "pytorch_model.bin")
    with torch.no_grad():
        assert (hf_model(idx).logits - GPT.load(tmp_path / "hf-bin")(idx)).abs().max().item() < 1e-4


def test_load_rejects_wrong_shapes_and_missing_weights(tmp_path: Path):
    GPT(small_config()).save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["gpt2cli"]["n_embd"] = 32
    config["gpt2cli"]["n_head"] = 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(Gpt2Error, match="has shape"):
        GPT.load(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(Gpt2Error, match=r"neither model\.safetensors nor pytorch_model\.bin"):
        GPT.load(tmp_path)


def _damage(directory: Path, what: str) -> None:
    config, weights = directory / "config.json", directory / "model.safetensors"
    if what in ("truncated safetensors", "empty safetensors"):
        weights.write_bytes(weights.read_bytes()[: 1000 if what.startswith("truncated") else 0])
    elif what == "truncated bin":
        from safetensors.torch import load_file

        torch.save(load_file(weights), directory / "pytorch_model.bin")
        weights.unlink()
        (directory / "pytorch_model.bin").write_bytes((directory / "pytorch_model.bin").read_bytes()[:5000])
    elif what.startswith("vocab"):  # Hugging Face's config.json, with another vocabulary size than the embedding's
        hf = {k: v for k, v in json.loads(config.read_text()).items() if k != "gpt2cli"}
        config.write_text(json.dumps({**hf, "vocab_size": int(what.split()[1])}))
    else:
        config.write_text(what)


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("truncated safetensors", r"model\.safetensors is damaged"),
        ("empty safetensors", r"model\.safetensors is damaged"),
        ("truncated bin", r"pytorch_model\.bin is damaged"),
        ('{"n_', r"config\.json is not valid JSON"),
        ("", r"config\.json is not valid JSON"),
        ("{}", r"config\.json: the config lacks 'n_embd'"),
        ("[]", r"config\.json is not a JSON object"),
        ('{"gpt2cli": {"n_head": 0}}', r"config\.json: n_head must be a positive integer"),
        ("vocab 250", r"model\.safetensors: tensor 'transformer\.wte\.weight' has shape \(300, 64\), the config needs"),
        ("vocab 310", r"model\.safetensors: tensor 'transformer\.wte\.weight' has shape \(300, 64\), the config needs"),
    ],
)
def test_load_names_a_damaged_file(tmp_path: Path, what: str, message: str):
    """Every command loading a model (sample, eval zero-shot, export) then fails with one line and exit 1."""
    GPT(small_config()).save(tmp_path)
    _damage(tmp_path, what)
    with pytest.raises(Gpt2Error, match=message) as excinfo:
        GPT.load(tmp_path)
    assert excinfo.value.exit_code == 1 and str(tmp_path) in str(excinfo.value)


def test_load_refuses_what_is_not_a_model(model_home: Path, tmp_path: Path):
    for artifact, kind in (("tokenizer/v1", "tokenizer"), ("tokens/v1", "tokens")):
        with pytest.raises(UsageError, match=f"{kind}@v1 is a '{kind}' artifact, not a model"):
            GPT.load(model_home / artifact)
    with pytest.raises(UsageError, match=r"is not a model: it has no config\.json"):
        GPT.load(tmp_path)


@pytest.mark.parametrize("rows", [1, 100, 1000])
def test_linear_cross_entropy_equals_cross_entropy(rows: int):
    from gpt2cli.model import linear_cross_entropy

    torch.manual_seed(rows)
    h = torch.randn(rows, 16, requires_grad=True)
    weight = (torch.randn(70_000, 16) * 0.1).requires_grad_()  # several chunks of rows at this vocabulary
    targets = torch.randint(0, 70_000, (rows,))
    fused = linear_cross_entropy(h, weight, targets)
    fused.backward()
    grads = h.grad.clone(), weight.grad.clone()
    h.grad = weight.grad = None
    reference = F.cross_entropy(h @ weight.t(), targets)
    reference.backward()
    torch.testing.assert_close(fused, reference)
    torch.testing.assert_close(grads[0], h.grad)
    torch.testing.assert_close(grads[1], weight.grad)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, weight, targets), reference)


def test_model_loss_matches_logits_and_gradients_flow_to_tied_weights():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=16, vocab_size=100, pad_vocab_multiple=64))
    idx, targets = torch.randint(0, 100, (3, 16)), torch.randint(0, 100, (3, 16))
    loss = model(idx, targets=targets)
    loss.backward()
    fused_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    reference = F.cross_entropy(model(idx).reshape(-1, 100), targets.reshape(-1))
    reference.backward()
    torch.testing.assert_close(loss, reference)
    for name, p in model.named_parameters():
        torch.testing.assert_close(fused_grads[name], p.grad, msg=name)
    assert fused_grads["transformer.wte.weight"][100:].abs().sum() == 0  # padding rows get no gradient


def test_linear_cross_entropy_under_bf16_autocast():
    from gpt2cli.model import linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(300, 32, requires_grad=True)
    weight = (torch.randn(5000, 32) * 0.1).requires_grad_()
    targets = torch.randint(0, 5000, (300,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(h, weight, targets)
        reference = F.cross_entropy((h @ weight.t()).float(), targets)
    fused.backward()
    assert fused.dtype == torch.float32 and h.grad.dtype == h.dtype and weight.grad.dtype == weight.dtype
    torch.testing.assert_close(fused, reference, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("rows", [1, 300, 1000])
def test_token_nll_equals_per_token_cross_entropy(rows: int):
    from gpt2cli.model import token_nll

    torch.manual_seed(rows)
    h, weight = torch.randn(rows, 16), torch.randn(70_000, 16) * 0.5  # several chunks of rows at this vocabulary
    targets = torch.randint(0, 70_000, (rows,))
    targets[::3] = -1  # not scored
    with torch.no_grad():
        nll = token_nll(h, weight, targets)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            nll_bf16 = token_nll(h, weight, targets)
    reference = F.cross_entropy(h @ weight.t(), targets, reduction="none", ignore_index=-1)
    torch.testing.assert_close(nll, reference)
    assert nll.dtype == nll_bf16.dtype == torch.float32 and (nll[::3] == 0).all() and (nll_bf16[::3] == 0).all()
    torch.testing.assert_close(nll_bf16, reference, rtol=2e-2, atol=5e-2)
    with pytest.raises(UsageError, match="no_grad"):
        token_nll(h.requires_grad_(), weight, targets)


def test_model_per_token_nll_matches_logits():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=16, vocab_size=100, pad_vocab_multiple=64))
    idx, targets = torch.randint(0, 100, (3, 16)), torch.randint(-1, 100, (3, 16))
    with torch.no_grad():
        nll = model(idx, targets=targets, reduction="none")
        reference = F.cross_entropy(model(idx).transpose(1, 2), targets, reduction="none", ignore_index=-1)
    assert nll.shape == (3, 16)
    torch.testing.assert_close(nll, reference)
    with pytest.raises(UsageError, match="reduction"):
        model(idx, targets=targets, reduction="sum")


def test_inference_gelu_equals_the_fused_op():
    from gpt2cli.model import gelu

    x = torch.linspace(-12, 12, 100_001)
    with torch.no_grad():
        fast = gelu(x)
    torch.testing.assert_close(fast, F.gelu(x, approximate="tanh"), rtol=1e-6, atol=1e-6)
    assert gelu(x.requires_grad_()).requires_grad  # with autograd: the fused op, which has a gradient


def test_linear_cross_entropy_when_the_target_probability_underflows():
    from gpt2cli.model import linear_cross_entropy

    torch.manual_seed(0)
    h = (torch.randn(50, 16) * 100).requires_grad_()  # logits hundreds apart: p(target) < 1e-38 for most rows
    weight = torch.randn(300, 16).requires_grad_()
    targets = torch.randint(0, 300, (50,))
    fused = linear_cross_entropy(h, weight, targets)
    reference = F.cross_entropy(h @ weight.t(), targets)
    assert reference.item() > 200 and torch.isfinite(fused)
    torch.testing.assert_close(fused, reference)
    fused.backward()
    grads = h.grad.clone(), weight.grad.clone()
    h.grad = weight.grad = None
    reference.backward()
    torch.testing.assert_close(grads[0], h.grad)
    torch.testing.assert_close(grads[1], weight.grad)


def tiny_hf_model(**settings) -> transformers.GPT2LMHeadModel:
    """A 2-layer Hugging Face GPT-2 with non-trivial LayerNorms and biases (a missed tensor would show)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=2, **settings)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("tie_word_embeddings", False),  # its own lm_head.weight, which a tied head would drop
        ("scale_attn_weights", False),
        ("layer_norm_epsilon", 1e-3),
        ("scale_attn_by_inverse_layer_idx", True),
    ],
)
def test_load_refuses_a_hugging_face_setting_that_changes_the_outputs(tmp_path: Path, setting: str, value):
    """The model is GPT-2 as released: a checkpoint of another variant is refused in one line naming the setting,
    never loaded into logits other than its own."""
    tiny_hf_model(**{setting: value}).save_pretrained(tmp_path)
    with pytest.raises(Gpt2Error, match=rf"config\.json: unsupported GPT-2 variant: {setting} is {value!r}"):
        GPT.load(tmp_path)


@pytest.mark.parametrize("layout", ["safetensors", "bin"])
def test_load_reads_sharded_hugging_face_checkpoints(tmp_path: Path, layout: str):
    """transformers shards large models (gpt2-xl) into files an index names (safetensors; older versions pickles,
    read with weights_only=True); a shard named outside the directory is refused."""
    from safetensors.torch import load_file

    hf = tiny_hf_model()
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    index = tmp_path / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    assert len(set(weight_map.values())) > 1
    if layout == "bin":  # the layout of pytorch_model.bin shards, as transformers 4 wrote them
        for shard in set(weight_map.values()):
            torch.save(load_file(tmp_path / shard), tmp_path / shard.replace(".safetensors", ".bin"))
            (tmp_path / shard).unlink()
        weight_map = {name: shard.replace(".safetensors", ".bin") for name, shard in weight_map.items()}
        index.unlink()
        index = tmp_path / "pytorch_model.bin.index.json"
        index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    idx = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        assert (hf(idx).logits - GPT.load(tmp_path)(idx)).abs().max().item() < 1e-4
    index.write_text(json.dumps({"weight_map": {**weight_map, "transformer.wte.weight": "../elsewhere.bin"}}))
    with pytest.raises(Gpt2Error, match=r"names a shard outside its directory: '\.\./elsewhere\.bin'"):
        GPT.load(tmp_path)
