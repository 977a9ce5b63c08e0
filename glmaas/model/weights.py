"""Decoder weights in and out: Hugging Face safetensors folders and GGUF files.

- `load_hf_dir(path)`: config.json plus model.safetensors or a sharded index, by transformers'
  own tensor names (see decoder.py).
- `load_gguf(path)`: a llama.cpp GGUF of a `llama` or `glm4` model, dequantised to float32
  (F32, F16, BF16, Q4_0, Q4_1, Q8_0 and the other types the `gguf` package can dequantise),
  with its tokenizer metadata. llama.cpp stores Llama's q and k rows permuted for its rotary
  kernel; the permutation is undone here and redone on export.
- `export_gguf(model, tokenizer, path, dtype)`: a GGUF (F16, Q8_0 or Q4_0) that llama.cpp loads and
  serves, carrying the source's tokenizer metadata over unchanged.

`GlmForCausalLM` (GLM-4-9B) has no GGUF mapping here: llama.cpp reads it as `chatglm`, with
fused q/k/v; load it from safetensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf import GGUFValueType
from safetensors.torch import load_file, save_file

from glmaas.model.decoder import Decoder, DecoderConfig

# ---------------------------------------------------------------------------------------------
# Hugging Face folders


def load_hf_dir(path: str | Path, dtype: torch.dtype = torch.float32) -> Decoder:
    """A Decoder from a transformers folder (config.json + *.safetensors), strictly by name."""
    folder = Path(path)
    config = DecoderConfig.from_hf_config(json.loads((folder / "config.json").read_text()))
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        shards = sorted(p.name for p in folder.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no .safetensors file in {folder}")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(folder / shard))
    if config.tie_word_embeddings:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    return decoder_from_state(config, state).to(dtype)


def decoder_from_state(config: DecoderConfig, state: dict[str, torch.Tensor]) -> Decoder:
    """A Decoder holding exactly `state` (every name, nothing more), built without first
    allocating and initialising weights that would be overwritten."""
    with torch.device("meta"):
        model = Decoder(config)
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:  # assign gave the head its own Parameter; share one again
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def save_hf_dir(model: Decoder, path: str | Path) -> Path:
    """Write config.json + model.safetensors that transformers (and load_hf_dir) read back."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_hf_config(), indent=2))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # shared with the embedding; transformers re-ties it
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


# ---------------------------------------------------------------------------------------------
# GGUF


@dataclass
class TokenizerInfo:
    """A model's tokenizer as GGUF metadata: every `tokenizer.*` key with its GGUF value types.

    Carried from a source GGUF into an export unchanged, so llama.cpp tokenizes (and applies the
    chat template) exactly as it did for the base model.
    """

    fields: dict[str, tuple[Any, list[int]]] = field(default_factory=dict)  # key -> (value, types)

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields[key][0] if key in self.fields else default

    @property
    def tokens(self) -> list[str]:
        return self.get("tokenizer.ggml.tokens", [])

    @property
    def bos_token_id(self) -> int | None:
        return self.get("tokenizer.ggml.bos_token_id")

    @property
    def eos_token_id(self) -> int | None:
        return self.get("tokenizer.ggml.eos_token_id")

    @property
    def chat_template(self) -> str | None:
        return self.get("tokenizer.chat_template")

    @classmethod
    def from_gguf(cls, path: str | Path) -> "TokenizerInfo":
        """The tokenizer metadata of a GGUF file, without reading its weights."""
        return cls._from_fields(gguf.GGUFReader(str(path)).fields)

    @classmethod
    def _from_fields(cls, fields) -> "TokenizerInfo":
        return cls({k: (_field_value(f), [int(t) for t in f.types]) for k, f in fields.items() if k.startswith("tokenizer.")})

    @classmethod
    def from_hf_dir(cls, path: str | Path, pre: str = "default") -> "TokenizerInfo":
        """GGUF tokenizer metadata from a byte-level BPE `tokenizer.json` (GPT-2 style, as SmolLM2
        and GLM-4 use) and its `tokenizer_config.json`.

        `pre` names llama.cpp's pre-tokenizer (its regular expressions), which tokenizer.json
        does not identify by name: "smollm" for SmolLM2, "glm4" for GLM-4; "default" is GPT-2's.
        """
        folder = Path(path)
        spec = json.loads((folder / "tokenizer.json").read_text())
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        if spec["model"].get("type") != "BPE":
            raise ValueError(f"only BPE tokenizers convert to GGUF here, not {spec['model'].get('type')!r}")
        ids = dict(spec["model"]["vocab"])
        special = {t["content"]: t["special"] for t in spec.get("added_tokens", [])}
        ids.update({t["content"]: t["id"] for t in spec.get("added_tokens", [])})
        by_id = {i: token for token, i in ids.items()}
        size = max(by_id) + 1
        tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
        # llama.cpp's token types: 1 normal, 3 control (special), 4 user-defined, 5 unused.
        types = [5 if i not in by_id else 3 if special.get(by_id[i]) else 4 if by_id[i] in special else 1
                 for i in range(size)]
        merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]

        def token_id(key: str) -> int | None:
            value = config.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            return ids.get(value) if value is not None else None

        string, uint32, boolean, array = (int(t) for t in (GGUFValueType.STRING, GGUFValueType.UINT32,
                                                           GGUFValueType.BOOL, GGUFValueType.ARRAY))
        fields: dict[str, tuple[Any, list[int]]] = {
            "tokenizer.ggml.model": ("gpt2", [string]),
            "tokenizer.ggml.pre": (pre, [string]),
            "tokenizer.ggml.tokens": (tokens, [array, string]),
            "tokenizer.ggml.token_type": (types, [array, int(GGUFValueType.INT32)]),
            "tokenizer.ggml.merges": (merges, [array, string]),
            "tokenizer.ggml.add_bos_token": (bool(config.get("add_bos_token", False)), [boolean]),
        }
        for key, gguf_key in [("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                              ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")]:
            if (i := token_id(key)) is not None:
                fields[f"tokenizer.ggml.{gguf_key}"] = (i, [uint32])
        template = config.get("chat_template")
        if template is None and (folder / "chat_template.jinja").exists():
            template = (folder / "chat_template.jinja").read_text()
        if isinstance(template, str):
            fields["tokenizer.chat_template"] = (template, [string])
        return cls(fields)


def _field_value(field) -> Any:
    """A GGUF metadata field's value as Python (str, number, bool, or a list of them)."""
    return field.contents()


# GGUF architecture -> our family; and back.
GGUF_ARCHES = {"llama": "llama", "glm4": "glm4"}

# Per-layer tensor names: ours (after `model.layers.N.`) -> llama.cpp's (after `blk.N.`).
_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_self_attn_layernorm": "post_attention_norm",  # glm4
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.gate_up_proj": "ffn_up",  # glm4: llama.cpp takes the fused matrix, gate first
    "mlp.down_proj": "ffn_down",
    "post_mlp_layernorm": "post_ffw_norm",  # glm4
}
_GLOBAL_NAMES = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
}


def gguf_name(name: str) -> str:
    """llama.cpp's name for one of our parameters: model.layers.3.mlp.up_proj.weight -> blk.3.ffn_up.weight."""
    stem, kind = name.rsplit(".", 1)
    if stem in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[stem]}.{kind}"
    _, _, layer, rest = stem.split(".", 3)  # model, layers, N, rest
    return f"blk.{layer}.{_LAYER_NAMES[rest]}.{kind}"


def llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder q/k rows the way llama.cpp's converter does for Llama (half-split -> pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_cpp_unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of llama_cpp_permute."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Decoder, TokenizerInfo]:
    """A Decoder with dequantised weights, and the tokenizer metadata, from a llama.cpp GGUF."""
    reader = gguf.GGUFReader(str(path))
    meta = {name: f for name, f in reader.fields.items()}
    arch = meta["general.architecture"].contents()
    if arch not in GGUF_ARCHES:
        raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: {sorted(GGUF_ARCHES)}")

    def hp(key: str, default: Any = None) -> Any:
        f = meta.get(f"{arch}.{key}")
        return default if f is None else f.contents()

    tokenizer = TokenizerInfo._from_fields(meta)
    tensors = {t.name: t for t in reader.tensors}
    hidden = hp("embedding_length")
    num_heads = hp("attention.head_count")
    num_kv = hp("attention.head_count_kv", num_heads)
    head_dim = hp("attention.key_length", hidden // num_heads)
    rope_dim = hp("rope.dimension_count", head_dim)
    vocab = hp("vocab_size") or int(tensors["token_embd.weight"].shape[-1])
    config = DecoderConfig(
        family=GGUF_ARCHES[arch],
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hp("feed_forward_length"),
        num_layers=hp("block_count"),
        num_heads=num_heads,
        num_kv_heads=num_kv,
        head_dim=head_dim,
        rope_theta=float(hp("rope.freq_base", 10000.0)),
        partial_rotary_factor=rope_dim / head_dim,
        rms_norm_eps=float(hp("attention.layer_norm_rms_epsilon", 1e-5)),
        attention_bias="blk.0.attn_q.bias" in tensors,
        tie_word_embeddings="output.weight" not in tensors,
        max_position_embeddings=hp("context_length", 2048),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.get("tokenizer.ggml.padding_token_id"),
    )
    if hp("rope.scaling.type", "none") not in ("none", "linear") or hp("rope.scaling.factor", 1.0) != 1.0:
        raise ValueError(f"{path}: rope scaling is not supported")
    with torch.device("meta"):
        names = list(Decoder(config).state_dict())
    state = {}
    unused = set(tensors)
    for name in names:
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        t = tensors.get(gguf_name(name))
        if t is None:
            raise ValueError(f"{path}: no tensor {gguf_name(name)} (for {name})")
        unused.discard(t.name)
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dimensions innermost first
        w = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type)).reshape(shape).copy())
        if config.family == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            w = llama_cpp_unpermute(w, num_heads)
        elif config.family == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            w = llama_cpp_unpermute(w, num_kv)
        state[name] = w
    if unused:
        raise ValueError(f"{path}: tensors this decoder has no place for: {sorted(unused)[:5]}")
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return decoder_from_state(config, state).to(dtype), tokenizer


# Export dtype -> (the matrices' GGML type, the file type llama.cpp reports).
EXPORT_DTYPES = {
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}


def export_gguf(
    model: Decoder,
    tokenizer: TokenizerInfo,
    path: str | Path,
    dtype: str = "f16",
    name: str | None = None,
) -> Path:
    """Write `model` as a GGUF llama.cpp can serve: matrices in `dtype`, norms and biases in F32.

    Merge any LoRA adapters first (lora.merge_lora): the file holds plain weights only.
    """
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"GGUF export dtype {dtype!r} is not supported; choose from {sorted(EXPORT_DTYPES)}")
    if any(n.endswith((".lora_A", ".lora_B")) for n in model.state_dict()):
        raise ValueError("merge the LoRA adapters into the model (merge_lora) before exporting it")
    config = model.config
    arch = {v: k for k, v in GGUF_ARCHES.items()}.get(config.family)
    if arch is None:
        raise ValueError(f"GGUF export of the {config.family!r} family is not supported")
    quant, file_type = EXPORT_DTYPES[dtype]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name or path.stem)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.rotary_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)
    for key, (value, types) in tokenizer.fields.items():
        vtypes = [GGUFValueType(t) for t in types]
        sub_type = vtypes[-1] if vtypes[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtypes[0], sub_type=sub_type)

    for pname, p in model.state_dict().items():
        if pname == "lm_head.weight" and config.tie_word_embeddings:
            continue
        w = p.detach().float().cpu()
        if config.family == "llama" and pname.endswith(("q_proj.weight", "q_proj.bias")):
            w = llama_cpp_permute(w, config.num_heads)
        elif config.family == "llama" and pname.endswith(("k_proj.weight", "k_proj.bias")):
            w = llama_cpp_permute(w, config.num_kv_heads)
        data = w.numpy()
        if data.ndim == 1:
            writer.add_tensor(gguf_name(pname), data.astype(np.float32))
        elif quant != gguf.GGMLQuantizationType.F16 and data.shape[-1] % 32 == 0:  # whole blocks only
            q = gguf.quants.quantize(data, quant)
            writer.add_tensor(gguf_name(pname), q, raw_dtype=quant)  # shape read from the bytes
        else:
            writer.add_tensor(gguf_name(pname), data.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
