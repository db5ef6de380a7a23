#!/usr/bin/env python3
"""Write tests/fixtures/mistral-tiny-real-vocab: a tiny random Mistral with the real 32,000-id
vocabulary, so the chat-template -> tokens -> generate -> JSON pipeline runs end to end in
`cargo test`; greedy ids for the reference Mistral prompt are checked against HF transformers
(no logits stored, to keep the fixture small). The tokenizer is read from
tests/fixtures/tokenizers/mistral-7b-v0.1 (tests assemble full model folders in temp dirs).

    .venv-ref/bin/python tools/make_tiny_mistral_real_vocab.py
"""
import json, os, re, shutil
import torch
from safetensors.torch import save_file
from transformers import MistralConfig, MistralForCausalLM, AutoTokenizer

torch.manual_seed(11)
torch.set_num_threads(1)
cfg = MistralConfig(vocab_size=32000, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1, head_dim=4, sliding_window=None, tie_word_embeddings=True, rope_theta=1e6,
                    bos_token_id=1, eos_token_id=2, pad_token_id=None, attn_implementation="eager")
model = MistralForCausalLM(cfg).eval()
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0, 0.5)
out = "tests/fixtures/mistral-tiny-real-vocab"
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
c = cfg.to_dict()
c["tie_word_embeddings"] = True
c["rope_theta"] = 1e6
c["architectures"] = ["MistralForCausalLM"]
json.dump(c, open(os.path.join(out, "config.json"), "w"), indent=2)
json.dump({"bos_token_id": 1, "eos_token_id": 2}, open(os.path.join(out, "generation_config.json"), "w"), indent=2)
model = MistralForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
tok = AutoTokenizer.from_pretrained("tests/fixtures/tokenizers/mistral-7b-v0.1")
src = open("src/chat.rs").read()
template = re.search(r'pub const MISTRAL_V3: &str = "(.*?)";\n', src).group(1).encode().decode("unicode_escape")
content = open("src/prompts/mistral.txt").read() + json.loads(open("examples/hn-postings.jsonl").readline())["source"]
ids = tok.apply_chat_template([{"role": "user", "content": content}], chat_template=template, add_generation_prompt=True,
                              tokenize=True, return_dict=False)
if isinstance(ids, dict):
    ids = ids["input_ids"]
x = torch.tensor([list(ids)])
with torch.no_grad():
    g = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, num_beams=1, max_new_tokens=12, pad_token_id=2)
new = g[0, x.shape[1]:].tolist()
json.dump({"prompt_ids": list(ids), "greedy": new, "max_new_tokens": 12}, open(os.path.join(out, "expected.json"), "w"))
print(len(ids), new)
