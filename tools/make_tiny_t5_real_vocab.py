#!/usr/bin/env python3
"""Write tests/fixtures/t5-tiny-real-vocab: a tiny random T5 with the real 32,128-id T5 vocabulary
(tokenised with the real T5 tokenizer.json, Apache-2.0, Google T5; see tests/fixtures/tokenizers/README.md),
in jobx-reference-v1 format, so the text pipeline (tokenizer -> prompt -> generate -> decode) runs
end to end in `cargo test` and its ids are checked against HF transformers.

    .venv-ref/bin/python tools/make_tiny_t5_real_vocab.py [--out tests/fixtures]
"""
import argparse, json, os, shutil
import torch
from safetensors.torch import save_file
from transformers import T5Config, T5ForConditionalGeneration, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="tests/fixtures")
ap.add_argument("--tokenizer", default="../shared/tokenizers/t5")
args = ap.parse_args()
torch.manual_seed(7)
torch.set_num_threads(1)
cfg = T5Config(vocab_size=32128, d_model=8, d_kv=4, d_ff=16, num_layers=2, num_decoder_layers=1, num_heads=2,
               relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
               tie_word_embeddings=True, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
model = T5ForConditionalGeneration(cfg).eval()
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0, 0.5)
out = os.path.join(args.out, "t5-tiny-real-vocab")
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
sd = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("embed_tokens.weight") and k != "lm_head.weight"}
save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
c = cfg.to_dict()
c["tie_word_embeddings"] = True
c.pop("scale_decoder_outputs", None)
c["architectures"] = ["T5ForConditionalGeneration"]
json.dump(c, open(os.path.join(out, "config.json"), "w"), indent=2)
json.dump({"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}, open(os.path.join(out, "generation_config.json"), "w"), indent=2)
# The tokenizer is not copied here (tests/fixtures/tokenizers/t5 holds it once); tests that need
# a complete model folder assemble one in a temporary directory.
tok = AutoTokenizer.from_pretrained(args.tokenizer)
# reload to make sure the written checkpoint is what we measure
model = T5ForConditionalGeneration.from_pretrained(out).eval()
text = "Label this posting: Senior Rust engineer, remote, $150k-$180k, Python and CUDA a plus."
enc = tok([text], return_tensors="pt")
with torch.no_grad():
    g = model.generate(**enc, do_sample=False, num_beams=1, max_new_tokens=20)
    dec = g[:, :6].clone()
    logits = model(**enc, decoder_input_ids=dec).logits
ref = {
    "case0.input_ids": enc["input_ids"].to(torch.int64),
    "case0.attention_mask": enc["attention_mask"].to(torch.int64),
    "case0.decoder_input_ids": dec.to(torch.int64).contiguous(),
    "case0.logits": logits.float().contiguous(),
    "case0.greedy": g[:, 1:].to(torch.int64).clone().contiguous(),
}
save_file(ref, os.path.join(out, "reference.safetensors"))
json.dump({"format": "jobx-reference-v1", "arch": "t5", "dtype": "float32", "adapter": None, "tolerance_rel": 1e-4,
           "cases": [{"name": "case0", "batch": 1, "has_logits": True, "has_greedy": True, "max_new_tokens": 20}],
           "text": text, "greedy_text": tok.decode(g[0, 1:], skip_special_tokens=True)},
          open(os.path.join(out, "reference.json"), "w"), indent=1)
print(json.dumps({"ids": enc["input_ids"][0].tolist(), "greedy": g[0].tolist(), "text": tok.decode(g[0], skip_special_tokens=True)}))
