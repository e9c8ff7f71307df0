"""LoraLinear and apply_lora against dense references on tiny models (see conftest.py)."""

import math

import pytest
import torch
import torch.nn as nn
from transformers import BertForSequenceClassification
from transformers.pytorch_utils import Conv1D

from harness.lora import (QUERY_VALUE_TARGETS, LoraConfig, LoraLinear, _LoraFunction, apply_lora, count_parameters,
                          linear_module_names, linear_suffixes, lora_layers, merge_lora, trainable_state_bytes,
                          unload_lora, unmerge_lora)

BERT_QV = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")]


def ids(batch=2, seq=7, seed=1):
    return torch.randint(0, 99, (batch, seq), generator=torch.Generator().manual_seed(seed))


def randomize_adapters(model, seed=2):
    """Give every B (and A) nonzero values, as after training, so the adapter path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for w in (layer.lora_A.weight, layer.lora_B.weight):
                w.copy_(torch.randn(w.shape, generator=g) * 0.3)


# ---------------------------------------------------------------- the layer: formula, inits, dropout

def test_linear_forward_matches_dense_reference():
    torch.manual_seed(0)
    base = nn.Linear(7, 5)
    layer = LoraLinear(base, r=3, alpha=6)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(2, 4, 7)
    W, b, A, B = base.weight, base.bias, layer.lora_A.weight, layer.lora_B.weight
    assert layer.scaling == 2.0  # 6 / 3
    ref = x @ W.T + b + 2.0 * x @ A.T @ B.T
    torch.testing.assert_close(layer(x), ref, atol=1e-6, rtol=0)
    assert layer(x).shape == (2, 4, 5)


def test_conv1d_forward_matches_dense_reference():
    torch.manual_seed(0)
    base = Conv1D(nf=5, nx=7)  # weight (in=7, out=5)
    layer = LoraLinear(base, r=3, alpha=6, rslora=True)
    nn.init.normal_(layer.lora_B.weight)
    assert (layer.in_features, layer.out_features, layer.fan_in_fan_out) == (7, 5, True)
    assert layer.lora_A.weight.shape == (3, 7) and layer.lora_B.weight.shape == (5, 3)
    assert layer.scaling == pytest.approx(6 / math.sqrt(3))  # 3.4641
    x = torch.randn(3, 7)
    ref = x @ base.weight + base.bias + layer.scaling * x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    torch.testing.assert_close(layer(x), ref, atol=1e-6, rtol=0)


def test_base_weight_is_held_not_copied():
    base = nn.Linear(8, 8)
    layer = LoraLinear(base, r=2, alpha=4)
    assert layer.base is base and layer.base.weight is base.weight
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert layer.lora_A.weight.requires_grad and layer.lora_B.weight.requires_grad


def test_kaiming_init_statistics():
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(256, 128), r=64, alpha=64)
    A, bound = layer.lora_A.weight, 1 / math.sqrt(256)  # kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(in))
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    assert A.abs().max() <= bound and A.abs().max() > 0.99 * bound
    assert A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)  # uniform std = bound/sqrt(3)
    assert abs(A.mean().item()) < 0.002


def test_gaussian_init_statistics():
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(256, 128), r=16, alpha=32, init="gaussian")
    A = layer.lora_A.weight  # peft's "gaussian": N(0, std=1/r)
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    assert A.std().item() == pytest.approx(1 / 16, rel=0.03)
    assert abs(A.mean().item()) < 0.002


@pytest.mark.parametrize("base", [nn.Linear(12, 9), Conv1D(nf=9, nx=12)], ids=["linear", "conv1d"])
def test_pissa_init_is_top_r_svd_and_keeps_output(base):
    torch.manual_seed(0)
    W0 = (base.weight.T if isinstance(base, Conv1D) else base.weight).detach().clone()  # (out, in)
    x = torch.randn(4, 12)
    y0 = base(x).detach()
    layer = LoraLinear(base, r=3, alpha=6, init="pissa")
    U, S, Vh = torch.linalg.svd(W0, full_matrices=False)
    top = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]
    scaled_BA = layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
    torch.testing.assert_close(scaled_BA, top, atol=1e-5, rtol=0)
    W_res = base.weight.T if isinstance(base, Conv1D) else base.weight
    torch.testing.assert_close(torch.linalg.svdvals(W_res)[:6], S[3:9], atol=1e-5, rtol=0)  # residual spectrum
    torch.testing.assert_close(layer(x), y0, atol=1e-5, rtol=0)


def test_dropout_only_on_adapter_input():
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(64, 8), r=4, alpha=8, dropout=0.5)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(16, 64) + 3.0  # no exact zeros in x
    W, b, A, B = layer.base.weight, layer.base.bias, layer.lora_A.weight, layer.lora_B.weight

    layer.train()
    torch.manual_seed(5)
    y = layer(x)
    torch.manual_seed(5)  # the same draw: dropout is the layer's only random op
    x_d = nn.functional.dropout(x, 0.5)
    dropped = x_d == 0
    assert 0.3 < dropped.float().mean().item() < 0.7
    torch.testing.assert_close(x_d[~dropped], 2 * x[~dropped])  # inverted dropout: x / (1 - p)
    ref = x @ W.T + b + layer.scaling * x_d @ A.T @ B.T  # the base path sees the raw input
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=0)

    layer.eval()
    ref = layer.base(x) + layer.scaling * x @ A.T @ B.T
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=0)
    assert torch.equal(layer(x), layer(x))


@pytest.mark.parametrize("fan_in_fan_out", [False, True], ids=["linear", "conv1d"])
@pytest.mark.parametrize("separate_dropout_input", [False, True])
@pytest.mark.parametrize("frozen_base", [False, True])
def test_lora_function_gradcheck(fan_in_fan_out, separate_dropout_input, frozen_base):
    """The hand-written backward against finite differences (fp64), with every input differentiable
    and with the base frozen (then the Function saves fewer tensors)."""
    g = torch.Generator().manual_seed(0)

    def t(*shape, grad=True):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=grad)

    x, a, b = t(6, 5), t(3, 5), t(4, 3)
    w, bias = t(*((5, 4) if fan_in_fan_out else (4, 5)), grad=not frozen_base), t(4, grad=not frozen_base)
    x_d = t(6, 5) if separate_dropout_input else None
    assert torch.autograd.gradcheck(lambda *args: _LoraFunction.apply(*args, 1.7, fan_in_fan_out),
                                    (x, x_d, w, bias, a, b))


def _saved_bytes(fn) -> int:
    """Bytes of every tensor autograd saves for backward while `fn()` runs (saved_tensors_hooks)."""
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn().sum().backward()
    return sum(sizes)


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("frozen_base", [True, False], ids=["frozen", "trainable-base"])
def test_saved_tensors_are_only_what_backward_reads(dropout, frozen_base):
    """N=512 tokens through a 384 -> 384 layer, r=8, fp32. The layer's own saves, counted by hand:
    weight W (a reference to the parameter, no new memory), A, B and hT = s A x_d^T; x_d, the
    dropped-out input, for dA; x itself only for dW (a trainable base) or as dA's input when there
    is no dropout; plus whatever dropout saves for itself (measured on its own below)."""
    N, d, r = 512, 384, 8
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(d, d), r=r, alpha=16, dropout=dropout).train()
    layer.base.requires_grad_(not frozen_base)
    x = torch.randn(N, d, requires_grad=True)
    act, weight, a, b, ht = 4 * N * d, 4 * d * d, 4 * r * d, 4 * d * r, 4 * r * N
    if dropout:
        dropout_own = _saved_bytes(lambda: nn.functional.dropout(x, dropout))  # its mask
        expected = weight + a + b + ht + act + (0 if frozen_base else act) + dropout_own  # x_d (+ x)
    else:
        expected = weight + a + b + ht + act  # x once, serving dA (and dW)
    assert _saved_bytes(lambda: layer(x)) == expected
    # the figures in the Function's docstring: 2.20 MB with dropout on and the base frozen (2.99 MB
    # before only backward's tensors were kept); 1.42 MB without dropout
    assert {(0.1, True): 2_203_648, (0.1, False): 2_990_080, (0.0, True): 1_417_216,
            (0.0, False): 1_417_216}[(dropout, frozen_base)] == expected


def test_frozen_base_with_dropout_gradients_match_dense_reference():
    """dx, dA, dB with dropout on and a frozen base (x itself not saved) equal the dense formula
    under the same dropout mask."""
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(7, 5).double(), r=3, alpha=6, dropout=0.5).train()
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(4, 5, dtype=torch.float64)
    torch.manual_seed(9)
    layer(x).backward(gy)
    got = [x.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad]

    W, bias = layer.base.weight, layer.base.bias
    x2, A, B = (t.detach().clone().requires_grad_() for t in (x, layer.lora_A.weight, layer.lora_B.weight))
    torch.manual_seed(9)  # the same mask
    (x2 @ W.T + bias + 2.0 * nn.functional.dropout(x2, 0.5) @ A.T @ B.T).backward(gy)
    for mine, ref in zip(got, [x2.grad, A.grad, B.grad]):
        torch.testing.assert_close(mine, ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("base", [nn.Linear(7, 5), Conv1D(nf=5, nx=7)], ids=["linear", "conv1d"])
def test_gradients_match_dense_reference(base):
    """dx, dA, dB of the layer (3-d input, frozen base) equal autograd through the dense formula."""
    torch.manual_seed(0)
    layer = LoraLinear(base.double(), r=3, alpha=6)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(2, 4, 7, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(2, 4, 5, dtype=torch.float64)
    layer(x).backward(gy)
    got = [x.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad]
    assert base.weight.grad is None and base.bias.grad is None

    W = base.weight.T if isinstance(base, Conv1D) else base.weight
    x2, A, B = (t.detach().clone().requires_grad_() for t in (x, layer.lora_A.weight, layer.lora_B.weight))
    (x2 @ W.T + base.bias + 2.0 * x2 @ A.T @ B.T).backward(gy)
    for mine, ref in zip(got, [x2.grad, A.grad, B.grad]):
        torch.testing.assert_close(mine, ref, atol=1e-12, rtol=0)


def test_autocast_runs_the_adapter_in_bf16_and_keeps_fp32_grads():
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(32, 16), r=4, alpha=8)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(8, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16  # as nn.Linear under autocast
    ref = layer.base(x) + layer.scaling * x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    torch.testing.assert_close(y.float(), ref, atol=0.1, rtol=0.02)
    y.float().sum().backward()
    assert layer.lora_A.weight.grad.dtype == torch.float32 and layer.lora_B.weight.grad.dtype == torch.float32
    assert layer.lora_B.weight.grad.abs().sum() > 0


def test_zero_dropout_is_identity_module():
    assert isinstance(LoraLinear(nn.Linear(4, 4), r=2, alpha=2).dropout, nn.Identity)
    assert isinstance(LoraLinear(nn.Linear(4, 4), r=2, alpha=2, dropout=0.1).dropout, nn.Dropout)


# ---------------------------------------------------------------- step 0 on real architectures

@pytest.mark.parametrize("init", ["kaiming", "gaussian"])
def test_step0_output_equals_base_exactly(tiny_bert, init):
    x = ids()
    y0 = tiny_bert(x).logits
    apply_lora(tiny_bert, r=4, alpha=8, init=init)
    assert torch.equal(tiny_bert(x).logits, y0)  # B = 0: bitwise equal, not just close


def test_step0_pissa_output_equals_base(tiny_llama):
    x = ids()
    y0 = tiny_llama(x).logits
    apply_lora(tiny_llama, r=4, alpha=8, target_modules="all-linear", init="pissa")
    torch.testing.assert_close(tiny_llama(x).logits, y0, atol=1e-5, rtol=0)


def test_conv1d_path_on_tiny_gpt2(tiny_gpt2):
    x = ids()
    y0 = tiny_gpt2(x).logits
    names = apply_lora(tiny_gpt2, r=4, alpha=8, target_modules=["c_attn"])
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    layer = tiny_gpt2.transformer.h[0].attn.c_attn
    assert isinstance(layer.base, Conv1D) and (layer.in_features, layer.out_features) == (32, 96)
    assert torch.equal(tiny_gpt2(x).logits, y0)
    randomize_adapters(tiny_gpt2)
    y1 = tiny_gpt2(x).logits
    assert not torch.allclose(y1, y0, atol=1e-3)
    merge_lora(tiny_gpt2)
    torch.testing.assert_close(tiny_gpt2(x).logits, y1, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- injection: targets, heads, patterns

def test_all_linear_on_llama_excludes_lm_head(tiny_llama):
    names = apply_lora(tiny_llama, r=2, alpha=4, target_modules="all-linear")
    projs = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert names == sorted(f"model.layers.{i}.{p}" for i in (0, 1) for p in projs)
    assert type(tiny_llama.lm_head) is nn.Linear and tiny_llama.lm_head.weight.requires_grad is False


def test_all_linear_on_bert_excludes_classifier_and_modules_to_save(tiny_bert):
    names = apply_lora(tiny_bert, r=2, alpha=4, target_modules="all-linear", modules_to_save=["classifier", "pooler"])
    assert len(names) == 12  # 2 layers x (query, key, value, attn out, intermediate, out)
    assert not any("pooler" in n or "classifier" in n for n in names)
    assert all(p.requires_grad for p in tiny_bert.bert.pooler.parameters())
    assert all(p.requires_grad for p in tiny_bert.classifier.parameters())


def test_query_value_default_resolves_per_model_family(tiny_bert, tiny_llama, tiny_gpt2):
    assert apply_lora(tiny_bert) == BERT_QV
    assert tiny_bert.lora_config.target_modules == ("query", "value")  # what adapter_config.json records
    assert apply_lora(tiny_llama) == [f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")]
    assert apply_lora(tiny_gpt2) == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]  # fused q, k, v
    # An explicit list always wins over the family default.
    bert = BertForSequenceClassification(tiny_bert.config)
    assert apply_lora(bert, target_modules=["key"]) == [n.replace("value", "key") for n in BERT_QV[1::2]]


def test_query_value_of_an_unknown_family_names_the_modules_to_pick_from(tiny_bert):
    tiny_bert.config.model_type = "my_encoder"
    with pytest.raises(ValueError, match=r"target_modules='query\+value' is invalid: no query/value names known for "
                                         r"model_type 'my_encoder'; .* end in: query, key, value, dense, classifier$"):
        apply_lora(tiny_bert)
    assert not lora_layers(tiny_bert)


@pytest.mark.parametrize("model_type", sorted(QUERY_VALUE_TARGETS))
def test_every_family_default_names_attention_layers_of_that_architecture(model_type):
    """Each family's q/v names exist in the real transformers architecture (built on the meta device:
    no memory, no weights), so the table cannot drift from the models' module names."""
    from transformers import CONFIG_MAPPING, AutoConfig, AutoModel

    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"transformers {__import__('transformers').__version__} has no {model_type}")
    config = AutoConfig.for_model(model_type)
    for key in ("num_hidden_layers", "num_layers", "n_layer", "num_decoder_layers"):
        if hasattr(config, key):
            setattr(config, key, 1)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    suffixes = linear_suffixes(model)
    targets = QUERY_VALUE_TARGETS[model_type]
    assert set(targets) <= set(suffixes), (model_type, suffixes)
    assert any(t.startswith(("q", "Wqkv", "c_attn", "in_proj")) for t in targets)  # attention, not MLP


def test_regex_and_suffix_targets(tiny_bert, tiny_llama):
    assert apply_lora(tiny_bert, target_modules=r".*layer\.1\.attention\.self\.(query|key)") == [
        "bert.encoder.layer.1.attention.self.key", "bert.encoder.layer.1.attention.self.query"]
    assert apply_lora(tiny_llama, target_modules=["q_proj", "mlp.down_proj"]) == [
        "model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"]


def test_rank_and_alpha_patterns(tiny_bert):
    apply_lora(tiny_bert, r=4, alpha=8, rank_pattern={"layer.0.attention.self.query": 2, r".*layer\.1\..*value": 6},
               alpha_pattern={"value": 48})
    got = {n: (m.r, m.scaling, tuple(m.lora_A.weight.shape)) for n, m in lora_layers(tiny_bert).items()}
    assert got == {
        "bert.encoder.layer.0.attention.self.query": (2, 4.0, (2, 32)),  # alpha 8 / r 2
        "bert.encoder.layer.0.attention.self.value": (4, 12.0, (4, 32)),  # alpha 48 / r 4
        "bert.encoder.layer.1.attention.self.query": (4, 2.0, (4, 32)),
        "bert.encoder.layer.1.attention.self.value": (6, 8.0, (6, 32)),  # alpha 48 / r 6
    }
    assert tiny_bert.lora_config.rank_alpha("bert.encoder.layer.1.attention.self.value") == (6, 48)


def test_config_is_stored_on_model(tiny_bert):
    apply_lora(tiny_bert, r=4, alpha=8, target_modules=["query"], modules_to_save="classifier")
    assert tiny_bert.lora_config == LoraConfig(r=4, alpha=8, target_modules=("query",),
                                               modules_to_save=("classifier",))


def test_only_adapters_and_modules_to_save_change_after_a_step(tiny_bert):
    apply_lora(tiny_bert, r=4, alpha=8, modules_to_save=["classifier"])
    before = {n: p.detach().clone() for n, p in tiny_bert.named_parameters()}
    opt = torch.optim.AdamW(tiny_bert.parameters(), lr=1e-2, weight_decay=0.0)
    tiny_bert.train()
    for _ in range(2):  # step 1 moves B (A's grad is 0 while B = 0); step 2 moves A
        loss = tiny_bert(ids(4), labels=torch.tensor([0, 1, 1, 0])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in tiny_bert.named_parameters() if not torch.equal(p, before[n])}
    expected = {f"{m}.lora_{ab}.weight" for m in BERT_QV for ab in "AB"} | {"classifier.weight", "classifier.bias"}
    assert changed == expected
    frozen = [n for n, p in tiny_bert.named_parameters() if n not in expected]
    assert all(not tiny_bert.get_parameter(n).requires_grad for n in frozen)


# ---------------------------------------------------------------- merge / unmerge / unload

def test_merge_equals_unmerged_and_unmerge_restores(tiny_bert):
    apply_lora(tiny_bert, r=4, alpha=8)
    randomize_adapters(tiny_bert)
    x = ids()
    y = tiny_bert(x).logits
    q = tiny_bert.bert.encoder.layer[0].attention.self.query
    W0 = q.base.weight.detach().clone()
    merge_lora(tiny_bert)
    assert q.merged and not torch.allclose(q.base.weight, W0, atol=1e-3)
    torch.testing.assert_close(q.base.weight, W0 + q.scaling * q.lora_B.weight @ q.lora_A.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(tiny_bert(x).logits, y, atol=1e-5, rtol=0)
    unmerge_lora(tiny_bert)
    assert not q.merged
    torch.testing.assert_close(q.base.weight, W0, atol=1e-6, rtol=0)
    torch.testing.assert_close(tiny_bert(x).logits, y, atol=1e-5, rtol=0)


def test_merge_twice_and_unmerge_unmerged_warn_and_do_nothing():
    layer = LoraLinear(nn.Linear(6, 6), r=2, alpha=2)
    nn.init.normal_(layer.lora_B.weight)
    W0 = layer.base.weight.detach().clone()
    with pytest.warns(UserWarning, match="not merged"):
        layer.unmerge()
    assert torch.equal(layer.base.weight, W0)
    layer.merge()
    W1 = layer.base.weight.detach().clone()
    with pytest.warns(UserWarning, match="already merged"):
        layer.merge()
    assert torch.equal(layer.base.weight, W1)


def test_bf16_merge_is_computed_in_fp32():
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(64, 64).to(torch.bfloat16), r=8, alpha=16)
    assert layer.lora_A.weight.dtype == torch.bfloat16
    nn.init.normal_(layer.lora_B.weight)
    W, A, B = (t.detach().clone() for t in (layer.base.weight, layer.lora_A.weight, layer.lora_B.weight))
    s = layer.scaling  # 16 / 8 = 2
    fp32_ref = (W.float() + s * B.float() @ A.float()).to(torch.bfloat16)
    naive_bf16 = W + s * (B @ A)  # three bf16 roundings
    assert not torch.equal(naive_bf16, fp32_ref)  # the check below can tell the two apart
    layer.merge()
    assert layer.base.weight.dtype == torch.bfloat16
    assert torch.equal(layer.base.weight, fp32_ref)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, W, atol=0.02, rtol=0.01)  # one bf16 rounding away


def test_unload_gives_plain_model_with_equal_outputs(tiny_bert, tmp_path):
    reference_keys = set(tiny_bert.state_dict())
    apply_lora(tiny_bert, r=4, alpha=8, modules_to_save=["classifier"])
    randomize_adapters(tiny_bert)
    x = ids()
    y = tiny_bert(x).logits
    plain = unload_lora(tiny_bert)
    assert not lora_layers(plain) and not hasattr(plain, "lora_config")
    assert set(plain.state_dict()) == reference_keys  # no lora_A / lora_B / .base. keys
    torch.testing.assert_close(plain(x).logits, y, atol=1e-5, rtol=0)
    plain.save_pretrained(tmp_path)
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(x).logits, y, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- accounting

def test_counts_closed_form_bert(tiny_bert):
    # embeddings 99*32 + 64*32 + 2*32 + LN 64 = 5344; per layer 4*(32*32+32) + 64 + (32*37+37) + (37*32+32) + 64
    # = 6789; pooler 32*32+32 = 1056; classifier 32*2+2 = 66  ->  5344 + 2*6789 + 1056 + 66 = 20044
    full = count_parameters(tiny_bert)
    assert full == {"trainable": 20044, "total": 20044, "trainable_pct": 100.0, "adapter": 0, "head": 20044}
    apply_lora(tiny_bert, r=4, alpha=8, modules_to_save=["classifier"])
    c = count_parameters(tiny_bert)
    adapter = 4 * 4 * (32 + 32)  # 4 layers x r (in + out) = 1024
    head = 32 * 2 + 2  # classifier weight + bias
    assert c == {"trainable": adapter + head, "total": 20044 + adapter,
                 "trainable_pct": pytest.approx(100 * 1090 / 21068), "adapter": adapter, "head": head}
    b = trainable_state_bytes(tiny_bert)
    assert b == {"param_bytes": 4 * 21068, "grad_bytes": 4 * 1090, "optimizer_bytes": 8 * 1090,
                 "state_bytes": 4 * 21068 + 12 * 1090}
    assert trainable_state_bytes(tiny_bert, optimizer_slots=0)["optimizer_bytes"] == 0


def test_counts_closed_form_llama_all_linear(tiny_llama):
    total0 = count_parameters(tiny_llama)["total"]
    apply_lora(tiny_llama, r=4, alpha=8, target_modules="all-linear")
    # per layer (in, out): q 32->32, k 32->16, v 32->16, o 32->32, gate 32->37, up 32->37, down 37->32
    per_layer = sum(4 * (i + o) for i, o in [(32, 32), (32, 16), (32, 16), (32, 32), (32, 37), (32, 37), (37, 32)])
    assert per_layer == 1724
    c = count_parameters(tiny_llama)
    assert (c["adapter"], c["trainable"], c["head"], c["total"]) == (2 * 1724, 2 * 1724, 0, total0 + 2 * 1724)
    assert sum(m.r * (m.in_features + m.out_features) for m in lora_layers(tiny_llama).values()) == 2 * 1724


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, message", [
    ({"r": 0}, "r=0"), ({"r": -2}, "r=-2"), ({"r": 2.5}, "r=2.5"),
    ({"alpha": 0}, "alpha=0"), ({"alpha": -1.0}, "alpha=-1.0"),
    ({"dropout": 1.0}, r"dropout=1.0.*\[0, 1\)"), ({"dropout": -0.1}, "dropout=-0.1"),
    ({"init": "xavier"}, r"init='xavier'.*kaiming.*gaussian.*pissa"),
    ({"target_modules": []}, "target_modules"), ({"target_modules": "("}, "not a valid regular expression"),
    ({"rank_pattern": {"query": 0}}, r"rank_pattern\['query'\]=0"),
    ({"alpha_pattern": {"query": -3}}, r"alpha_pattern\['query'\]=-3"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoraConfig(**kwargs)


def test_layer_rejects_bad_input():
    with pytest.raises(ValueError, match="Embedding.*nn.Linear or transformers Conv1D"):
        LoraLinear(nn.Embedding(5, 4), r=2, alpha=2)
    with pytest.raises(ValueError, match="r=0"):
        LoraLinear(nn.Linear(4, 4), r=0, alpha=2)
    with pytest.raises(ValueError, match=r"r=5: pissa needs r <= min\(in, out\) = 4"):
        LoraLinear(nn.Linear(4, 6), r=5, alpha=2, init="pissa")


def test_apply_lora_errors_name_the_bad_value(tiny_bert):
    # The distinct name suffixes of the Linear modules, not every full path (211 on SmolLM2).
    with pytest.raises(ValueError, match=r"\['q_proj'\] matches none .*; their names end in: query, key, value, "
                                         r"dense, classifier$"):
        apply_lora(tiny_bert, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="modules_to_save entry 'head'.*classifier"):
        apply_lora(tiny_bert, modules_to_save=["head"])
    with pytest.raises(ValueError, match="rank_pattern key 'key' matches no adapted module"):
        apply_lora(tiny_bert, rank_pattern={"key": 2})
    assert not lora_layers(tiny_bert)  # failed calls left the model untouched
    apply_lora(tiny_bert)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        apply_lora(tiny_bert)
    with pytest.raises(ValueError, match="optimizer_slots=-1"):
        trainable_state_bytes(tiny_bert, optimizer_slots=-1)


def test_linear_module_names_lists_linear_and_conv1d(tiny_gpt2):
    names = linear_module_names(tiny_gpt2)
    assert names[:4] == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                         "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
    assert names[-1] == "lm_head" and len(names) == 9
