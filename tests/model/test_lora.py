"""LoRA on the decoder: only adapters train, merging changes no output, adapters save and load."""

import pytest
import torch

from glmaas.model.decoder import Decoder, DecoderConfig
from glmaas.model.lora import (
    LoRALinear,
    apply_lora,
    load_lora_state_dict,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=12, attention_bias=True)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(family: str, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(DecoderConfig(family=family, tie_word_embeddings=family == "llama", **TINY)).eval()


def trained_adapters(model: Decoder) -> Decoder:
    """Adapters with non-zero B, as after some training (fresh ones are an exact no-op)."""
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0, 0.3)
    return model


IDS = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", ["llama", "glm", "glm4"])
def test_fresh_adapters_change_nothing(family):
    model = tiny(family)
    before, _ = model(IDS)
    after, _ = apply_lora(model, rank=4, alpha=8)(IDS)
    assert torch.equal(before, after)


@pytest.mark.parametrize("family", ["llama", "glm", "glm4"])
def test_only_adapters_require_grad(family):
    model = apply_lora(tiny(family), rank=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    assert trainable == set(lora_state_dict(model))
    logits, _ = model(IDS)
    logits.sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    assert all(model.get_parameter(n).grad is not None for n in trainable)


@pytest.mark.parametrize("family", ["llama", "glm", "glm4"])
def test_merged_model_gives_the_adapted_outputs(family):
    model = trained_adapters(apply_lora(tiny(family), rank=4, alpha=8))
    adapted, _ = model(IDS)
    base, _ = tiny(family)(IDS)
    merged = merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(tiny(family).state_dict())  # a plain Decoder again
    out, _ = merged(IDS)
    assert (out - adapted).abs().max().item() < 1e-4
    assert (base - adapted).abs().max().item() > 1e-2  # the adapters did change the model


def test_targets_choose_the_wrapped_layers():
    model = apply_lora(tiny("llama"), targets=("q_proj", "v_proj"))
    wrapped = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert wrapped == {"q_proj", "v_proj"}
    with pytest.raises(ValueError):
        apply_lora(tiny("llama"), targets=("no_such_layer",))


def test_adapters_save_and_load():
    source = trained_adapters(apply_lora(tiny("glm4"), rank=4))
    saved = lora_state_dict(source)
    target = apply_lora(tiny("glm4"), rank=4)
    load_lora_state_dict(target, saved)
    assert torch.equal(source(IDS)[0], target(IDS)[0])
    with pytest.raises(ValueError):
        load_lora_state_dict(apply_lora(tiny("glm4"), rank=4, targets=("q_proj",)), saved)


def test_a_few_steps_fit_a_batch():
    model = tiny("llama")
    with torch.no_grad():  # an output head of a trained model's scale, not of the init's
        model.lm_head.weight.mul_(25)
    model = apply_lora(model, rank=4, alpha=8).train()
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    targets = IDS[:, 1:]

    def loss():
        logits, _ = model(IDS[:, :-1])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())

    first = loss().item()
    for _ in range(30):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.5 * first


def test_bfloat16_model_trains_its_adapters():
    model = apply_lora(tiny("glm4").to(torch.bfloat16), rank=4)
    logits, _ = model(IDS)
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in lora_parameters(model))
    assert merge_lora(model).lm_head.weight.dtype == torch.bfloat16
