#!/usr/bin/env python3
"""Write tests/fixtures/mistral-chat-ids.json: token ids that HF transformers'
`apply_chat_template(..., add_generation_prompt=True, tokenize=True)` gives for the reference
project's Mistral evaluation prompt (src/prompts/mistral.txt + a posting) with the real Mistral
tokenizer and the engine's built-in mistral-v3 template (src/chat.rs MISTRAL_V3, read from the
source so the two cannot drift).

    .venv-ref/bin/python tools/make_chat_ids.py
"""
import json, re
from transformers import AutoTokenizer

src = open("src/chat.rs").read()
m = re.search(r'pub const MISTRAL_V3: &str = "(.*?)";\n', src)
template = m.group(1).encode().decode("unicode_escape")
prefix = open("src/prompts/mistral.txt").read()
tok = AutoTokenizer.from_pretrained("tests/fixtures/tokenizers/mistral-7b-v0.1")
postings = [json.loads(l)["source"] for l in open("examples/hn-postings.jsonl")][:2]
cases = []
for content in [prefix + postings[0], prefix + postings[1], "  leading spaces, unicode: café – naïve “quotes” \\ {braces}\n\nnewlines"]:
    msgs = [{"role": "user", "content": content}]
    text = tok.apply_chat_template(msgs, chat_template=template, add_generation_prompt=True, tokenize=False)
    ids = tok.apply_chat_template(msgs, chat_template=template, add_generation_prompt=True, tokenize=True, return_dict=False)
    if isinstance(ids, dict):
        ids = ids["input_ids"]
    cases.append({"content": content, "text": text, "ids": list(ids)})
json.dump({"tokenizer": "tests/fixtures/tokenizers/mistral-7b-v0.1", "template": template, "cases": cases},
          open("tests/fixtures/mistral-chat-ids.json", "w"), ensure_ascii=False, indent=1)
print([len(c["ids"]) for c in cases], cases[0]["ids"][:8])
