"""GGUF in and out on the real default model (SmolLM2-135M-Instruct, Q4_1), checked by llama.cpp.

- Loading dequantises Q4_1 to float32; llama.cpp multiplies the quantised weights with
  quantised activations, so the two are the same model up to rounding: their next-token choices
  agree on nearly every position (97% on 20 prompts x 32 tokens when this was written).
- Exporting the PyTorch model to F16 and serving it with llama.cpp gives the PyTorch model's
  greedy output token for token (the issue's round trip: 20 prompts, 32 tokens).
- A Q8_0 export loads and generates, up to its coarser rounding.
"""

import gguf
import numpy as np
import pytest
import torch
from llama_cpp import Llama

from glmaas.engines.llamacpp_params import plain_cpu_buffers
from glmaas.engines.registry import default_model_path
from glmaas.model.decoder import Decoder, DecoderConfig, left_pad
from glmaas.model.weights import TokenizerInfo, export_gguf, llama_cpp_permute, llama_cpp_unpermute, load_gguf

plain_cpu_buffers()  # llama.cpp loads these models as the engine does (llamacpp_params.py)

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time",
    "The three primary colors are",
    "Water boils at",
    "In machine learning, a neural network",
    "My favourite fruit is",
    "1, 2, 3, 4,",
    "The quick brown fox",
    "To make a cup of tea,",
    "The largest planet in the solar system",
    "Python is a programming language that",
    "Dear Sir or Madam,",
    "The meaning of life is",
    "Roses are red,",
    "SELECT * FROM",
    "The sun rises in the",
    "A haiku about autumn:",
    "Translate to French: Hello",
    "The history of Rome",
]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def smollm2():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tokenizer = load_gguf(default_model_path())
    yield model.eval(), tokenizer
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def exported(smollm2, tmp_path_factory):
    """dtype -> path of the PyTorch model exported to GGUF."""
    model, tokenizer = smollm2
    folder = tmp_path_factory.mktemp("gguf")
    return {dtype: export_gguf(model, tokenizer, folder / f"smollm2-{dtype}.gguf", dtype=dtype) for dtype in ("f16", "q8_0")}


def llama_cpp(path) -> Llama:
    return Llama(model_path=str(path), n_ctx=256, n_threads=1, n_batch=64, verbose=False)


def tokenize(llm: Llama, prompt: str) -> list[int]:
    return llm.tokenize(prompt.encode(), add_bos=False, special=False)


def llama_cpp_greedy(llm: Llama, ids: list[int], eos: int) -> list[int]:
    out = []
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(token)
        if token == eos or len(out) == NEW_TOKENS:
            return out
    return out


def pytorch_greedy(model, prompts: list[list[int]], eos: int) -> list[list[int]]:
    ids, mask = left_pad(prompts, pad_id=eos)
    rows = model.generate_greedy(ids, NEW_TOKENS, stop_ids=[eos], attention_mask=mask).tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows]


def next_token_agreement(model, llm: Llama, prompts: list[str], eos: int) -> float:
    """The share of llama.cpp's greedy tokens that the PyTorch model also ranks first, fed the same text."""
    agree = total = 0
    for prompt in prompts:
        ids = tokenize(llm, prompt)
        theirs = llama_cpp_greedy(llm, ids, eos)
        with torch.no_grad():
            logits, _ = model(torch.tensor([ids + theirs[:-1]]))
        ours = logits[0, len(ids) - 1 :].argmax(-1).tolist()
        agree += sum(a == b for a, b in zip(ours, theirs))
        total += len(theirs)
    return agree / total


def test_gguf_metadata_becomes_the_smollm2_config(smollm2):
    model, tokenizer = smollm2
    c = model.config
    assert (c.family, c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim) == ("llama", 30, 576, 9, 3, 64)
    assert c.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert len(tokenizer.tokens) == c.vocab_size == 49152
    assert tokenizer.eos_token_id == c.eos_token_id == 2
    assert "im_start" in tokenizer.chat_template
    assert TokenizerInfo.from_gguf(default_model_path()).fields == tokenizer.fields


def test_dequantised_weights_choose_the_tokens_llama_cpp_chooses(smollm2):
    model, tokenizer = smollm2
    source = llama_cpp(default_model_path())
    assert next_token_agreement(model, source, PROMPTS[:6], tokenizer.eos_token_id) >= 0.9


@pytest.mark.slow
def test_f16_export_served_by_llama_cpp_matches_pytorch_greedy_output(smollm2, exported):
    model, tokenizer = smollm2
    eos = tokenizer.eos_token_id
    llm = llama_cpp(exported["f16"])
    prompts = [tokenize(llm, p) for p in PROMPTS]
    ours = pytorch_greedy(model, prompts, eos)
    theirs = [llama_cpp_greedy(llm, ids, eos) for ids in prompts]
    assert sum(len(t) == NEW_TOKENS for t in theirs) >= 15  # mostly full-length continuations
    for prompt, a, b in zip(PROMPTS, ours, theirs):
        assert a == b, prompt


def test_q8_0_export_loads_and_generates(smollm2, exported):
    model, tokenizer = smollm2
    assert exported["q8_0"].stat().st_size < 0.6 * exported["f16"].stat().st_size
    llm = llama_cpp(exported["q8_0"])
    text = llm.create_completion("The capital of France is", max_tokens=8, temperature=0)["choices"][0]["text"]
    assert "Paris" in text
    assert next_token_agreement(model, llm, PROMPTS[:4], tokenizer.eos_token_id) >= 0.8


def test_export_carries_the_tokenizer_and_reloads_to_the_same_weights(smollm2, exported):
    model, tokenizer = smollm2
    reloaded, reloaded_tokenizer = load_gguf(exported["f16"])
    assert gguf.GGUFReader(str(exported["f16"])).fields["general.architecture"].contents() == "llama"
    assert reloaded.config == model.config
    assert reloaded_tokenizer.fields == tokenizer.fields
    mine, theirs = model.state_dict(), reloaded.state_dict()
    for name in mine:  # F16 rounding only: q/k rows came back in their own order
        assert torch.allclose(mine[name], theirs[name], rtol=1e-3, atol=1e-4), name


def test_llama_cpp_rotary_permutation_is_undone_exactly():
    w = torch.randn(3 * 64, 10)
    assert torch.equal(llama_cpp_unpermute(llama_cpp_permute(w, 3), 3), w)
    assert not torch.equal(llama_cpp_permute(w, 3), w)


@pytest.mark.parametrize("family, bias", [("glm4", True), ("glm4", False), ("llama", True)])
def test_tiny_random_export_gives_llama_cpp_our_logits(smollm2, tmp_path, family, bias):
    """GLM-4's layout (interleaved partial rotary, fused gate-up, sandwich norms) as llama.cpp reads it."""
    _, tokenizer = smollm2
    config = DecoderConfig(family=family, vocab_size=49152, hidden_size=64, intermediate_size=96, num_layers=2,
                           num_heads=4, num_kv_heads=2, head_dim=32, attention_bias=bias, tie_word_embeddings=False,
                           partial_rotary_factor=0.5 if family == "glm4" else 1.0)
    torch.manual_seed(0)
    model = Decoder(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if name.endswith("norm.weight") else 0.0) + 0.4 * torch.randn_like(p))
    llm = Llama(model_path=str(export_gguf(model, tokenizer, tmp_path / "tiny.gguf")), n_ctx=64, n_threads=1,
                logits_all=True, verbose=False)
    ids = list(range(100, 116))
    llm.eval(ids)
    theirs = torch.tensor(np.array(llm.scores[: len(ids)]))
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0][0]
    assert (theirs - ours).abs().max() <= 0.03 * ours.abs().max()  # F16 weights and activations
    assert torch.equal(theirs.argmax(-1), ours.argmax(-1))


def hf_tokenizer_folder(tokenizer: TokenizerInfo, folder):
    """SmolLM2's tokenizer as transformers ships it: tokenizer.json (built by the tokenizers library
    from the GGUF's vocabulary and merges) and tokenizer_config.json."""
    import json

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens, types = tokenizer.tokens, tokenizer.get("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in tokenizer.get("tokenizer.ggml.merges")]
    hf = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True) for t, kind in zip(tokens, types) if kind == 3])
    hf.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
              "pad_token": "<|im_end|>", "add_bos_token": False, "chat_template": tokenizer.chat_template}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_tokenizer_json_becomes_gguf_metadata_llama_cpp_tokenizes_with(smollm2, exported, tmp_path):
    model, tokenizer = smollm2
    info = TokenizerInfo.from_hf_dir(hf_tokenizer_folder(tokenizer, tmp_path), pre="smollm")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.chat_template", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        assert info.get(key) == tokenizer.get(key), key
    path = export_gguf(model, info, tmp_path / "from-tokenizer-json.gguf")
    ours, source = llama_cpp(path), llama_cpp(exported["f16"])
    for text in ["Hello, world!", "<|im_start|>user\nWhat is 2+2?<|im_end|>", "  indented\tcode()", "naïve café"]:
        assert ours.tokenize(text.encode(), special=True) == source.tokenize(text.encode(), special=True)


@pytest.mark.parametrize("dtype, tolerance", [("q8_0", 0.01), ("q4_0", 0.15)])
def test_quantised_export_reloads_within_its_rounding(tmp_path, dtype, tolerance):
    # Only load_gguf reads this file, not llama.cpp: no tokenizer, a small vocabulary.
    config = DecoderConfig(family="glm4", vocab_size=512, hidden_size=64, intermediate_size=96, num_layers=1,
                           num_heads=4, num_kv_heads=2, head_dim=32, tie_word_embeddings=False)
    model = Decoder(config)
    path = export_gguf(model, TokenizerInfo(), tmp_path / f"tiny-{dtype}.gguf", dtype=dtype)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert types["blk.0.attn_q.weight"] == dtype.upper() and types["blk.0.attn_norm.weight"] == "F32"
    reloaded, _ = load_gguf(path)
    for name, w in model.state_dict().items():
        assert (reloaded.state_dict()[name] - w).abs().max() <= tolerance * w.abs().max(), name


def test_unmerged_lora_model_is_not_exported(tmp_path):
    from glmaas.model.lora import apply_lora

    model = apply_lora(Decoder(DecoderConfig(vocab_size=49152, hidden_size=64, intermediate_size=96, num_layers=1,
                                             num_heads=4, num_kv_heads=2, head_dim=16)))
    with pytest.raises(ValueError, match="merge_lora"):
        export_gguf(model, TokenizerInfo(), tmp_path / "x.gguf")
