"""The decoder family against transformers' own Llama, Glm and Glm4 on tiny random configs.

Each reference model gets random weights everywhere (norm weights and biases too, so a wrong
norm or a missing bias shows), is loaded into our Decoder by state-dict name with nothing left
over on either side, and must give the same logits (fp32, 1e-4) and the same greedy tokens
through the KV cache. No weights are downloaded.
"""

import pytest
import torch
import transformers

from glmaas.model.decoder import Decoder, DecoderConfig

VOCAB = 97

# GQA everywhere, and head_dim != hidden_size / num_heads everywhere.
SHAPE = dict(
    vocab_size=VOCAB,
    hidden_size=48,
    intermediate_size=72,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

CASES = {
    "llama-bias-untied": (transformers.LlamaConfig, dict(attention_bias=True, tie_word_embeddings=False)),
    "llama-tied": (transformers.LlamaConfig, dict(attention_bias=False, tie_word_embeddings=True)),
    "glm-bias-untied": (transformers.GlmConfig, dict(attention_bias=True, tie_word_embeddings=False)),
    "glm-nobias-tied": (transformers.GlmConfig, dict(attention_bias=False, tie_word_embeddings=True)),
    "glm4-bias-untied": (transformers.Glm4Config, dict(attention_bias=True, tie_word_embeddings=False)),
    "glm4-nobias-tied": (transformers.Glm4Config, dict(attention_bias=False, tie_word_embeddings=True)),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reference(case: str):
    """A transformers causal LM of the case's config with every parameter randomised."""
    config_cls, overrides = CASES[case]
    config = config_cls(**SHAPE, **overrides, rope_theta=500.0)
    torch.manual_seed(sum(map(ord, case)))
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.5 * torch.randn_like(p))
    return model


def ours(hf_model, **overrides) -> Decoder:
    config = DecoderConfig.from_hf_config(hf_model.config.to_dict())
    for key, value in overrides.items():
        setattr(config, key, value)
    model = Decoder(config).eval()
    model.load_state_dict(hf_model.state_dict(), strict=True)  # no missing, no unused keys
    return model


def prompt(batch=2, length=13, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def max_logit_difference(hf_model, model) -> float:
    ids = prompt()
    with torch.no_grad():
        want = hf_model(ids).logits
        got, _ = model(ids)
    return (want - got).abs().max().item()


@pytest.mark.parametrize("case", CASES)
def test_state_dict_names_are_transformers_own(case):
    hf_model = reference(case)
    config = DecoderConfig.from_hf_config(hf_model.config.to_dict())
    assert set(Decoder(config).state_dict()) == set(hf_model.state_dict())


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(case):
    hf_model = reference(case)
    assert max_logit_difference(hf_model, ours(hf_model)) <= 1e-4


@pytest.mark.parametrize("case", CASES)
def test_greedy_continuation_with_kv_cache_matches_generate(case):
    hf_model = reference(case)
    model = ours(hf_model)
    ids = prompt(batch=1, length=9, seed=1)
    want = hf_model.generate(
        ids, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0, min_new_tokens=24
    )[:, ids.size(1):]
    got = model.generate_greedy(ids, max_new_tokens=24)
    assert got.tolist() == want.tolist()
    assert len(set(got[0].tolist())) > 1  # a continuation that varies, not one token repeated


@pytest.mark.parametrize("case", ["llama-bias-untied", "glm4-bias-untied"])
def test_left_padded_batch_generates_as_each_prompt_alone(case):
    hf_model = reference(case)
    model = ours(hf_model)
    short, long = prompt(1, 5, seed=2), prompt(1, 9, seed=3)
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    mask = (torch.arange(9) >= torch.tensor([[4], [0]])).long()
    logits, _ = model(batch, attention_mask=mask)
    alone, _ = model(short)
    assert (logits[0, 4:] - alone[0]).abs().max().item() <= 1e-4
    want = hf_model.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[:, 9:]
    assert model.generate_greedy(batch, 8, attention_mask=mask).tolist() == want.tolist()
    assert model.generate_greedy(short, 8).tolist()[0] == want.tolist()[0]


@pytest.mark.parametrize("case", ["glm-bias-untied", "glm4-nobias-tied"])
def test_half_split_rotary_is_caught_for_glm(case):
    """Negative control: GLM rotates interleaved pairs; the Llama layout must fail the check."""
    hf_model = reference(case)
    wrong = ours(hf_model, rope_interleaved=False)
    assert max_logit_difference(hf_model, wrong) > 1e-2


def test_config_round_trips_through_transformers_config():
    for case in CASES:
        config = DecoderConfig.from_hf_config(reference(case).config.to_dict())
        assert DecoderConfig.from_hf_config(config.to_hf_config()) == config
