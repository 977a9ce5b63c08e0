"""Hugging Face folders in and out: what transformers writes we read, and the other way round."""

import json

import pytest
import torch
import transformers

from glmaas.model.weights import load_hf_dir, save_hf_dir

SHAPE = dict(vocab_size=97, hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=128, pad_token_id=0)
IDS = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reference(config_cls, **overrides):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config_cls(**SHAPE, **overrides), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.1 * torch.randn_like(p))  # norms and biases away from their initial values too
    return model.eval()


@pytest.mark.parametrize(
    "config_cls, overrides",
    [
        (transformers.LlamaConfig, dict(tie_word_embeddings=True)),
        (transformers.GlmConfig, dict(attention_bias=True)),
        (transformers.Glm4Config, dict(attention_bias=True, tie_word_embeddings=False)),
    ],
)
def test_transformers_folder_loads(tmp_path, config_cls, overrides):
    hf_model = reference(config_cls, **overrides)
    hf_model.save_pretrained(tmp_path)
    model = load_hf_dir(tmp_path)
    with torch.no_grad():
        assert (model(IDS)[0] - hf_model(IDS).logits).abs().max().item() <= 1e-4
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    assert tied == model.config.tie_word_embeddings


def test_sharded_folder_loads(tmp_path):
    hf_model = reference(transformers.Glm4Config)
    hf_model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    model = load_hf_dir(tmp_path)
    with torch.no_grad():
        assert (model(IDS)[0] - hf_model(IDS).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("config_cls", [transformers.LlamaConfig, transformers.Glm4Config])
def test_saved_folder_loads_in_transformers(tmp_path, config_cls):
    hf_model = reference(config_cls)
    ours = load_hf_dir(_saved(hf_model, tmp_path / "src"))
    save_hf_dir(ours, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == hf_model.config.model_type
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (back(IDS).logits - ours(IDS)[0]).abs().max().item() <= 1e-4


def test_unsupported_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    with pytest.raises(ValueError, match="mixtral"):
        load_hf_dir(tmp_path)


def _saved(hf_model, folder):
    hf_model.save_pretrained(folder)
    return folder
