import time, os, json, numpy as np, llama_cpp
from glmaas.engines.llamacpp import load_model, tokenize_text
from glmaas.engines.registry import default_model_path
model = load_model("m", default_model_path()); vocab = llama_cpp.llama_model_get_vocab(model)
n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
L, S = int(os.environ.get("L", 160)), 16
prompts = [tokenize_text(vocab, (f"Request {s} tell a story about the sea. " * 60), special=False)[:L] for s in range(S)]
def run(name, n_ctx, unified, fa):
    p = llama_cpp.llama_context_default_params()
    p.n_seq_max = S; p.n_ctx = n_ctx; p.n_batch = p.n_ubatch = 512
    p.n_threads = p.n_threads_batch = 1; p.kv_unified = unified; p.flash_attn_type = fa; p.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model, p); b = llama_cpp.llama_batch_init(512, 0, 1)
    def fill(items):
        for i, (t, pos, s, lg) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i] = t, pos, 1; b.seq_id[i][0], b.logits[i] = s, lg
        b.n_tokens = len(items)
    items = [(t, i, s, i == L-1) for s in range(S) for i, t in enumerate(prompts[s])]
    for k in range(0, len(items), 512):
        fill(items[k:k+512]); assert llama_cpp.llama_decode(ctx, b) == 0
    pos = [L]*S; last = [1]*S; c0 = time.process_time(); steps = 12
    for _ in range(steps):
        fill([(last[s], pos[s], s, True) for s in range(S)]); assert llama_cpp.llama_decode(ctx, b) == 0
        rows = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(S, n_vocab)); last = [int(x) for x in rows.argmax(1)]; pos = [x+1 for x in pos]
    ms = (time.process_time()-c0)/steps*1000
    llama_cpp.llama_batch_free(b); llama_cpp.llama_free(ctx)
    return ms
cfgs = [("per-slot 16x2048, plain attention", 32768, False, 0), ("shared 8192, flash attention", 8192, True, 1),
        ("shared 8192, plain attention", 8192, True, 0), ("per-slot 16x2048, flash attention", 32768, False, 1)]
res = {c[0]: [] for c in cfgs}
for r in range(2):
    for c in cfgs: res[c[0]].append(run(*c))
for k, v in res.items(): print(f"{k:36} CPU ms per decode step (16 seqs at ~{L} tokens, 1 thread): {v}  load {os.getloadavg()[0]:.1f}")
