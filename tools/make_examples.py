#!/usr/bin/env python3
"""Build examples/hn-postings.jsonl from the MIT-licensed HN "Who is hiring" gold cases
(akurilin/whoishiringreport, evals/fixtures/eval_cases.json, as ../shared/data/hn-gold.json):
one {"id", "source"} line per posting, HTML turned into plain text.

    python3 tools/make_examples.py [--src ../shared/data/hn-gold.json] [--n 4]
"""
import argparse, html, json, re

ap = argparse.ArgumentParser()
ap.add_argument("--src", default="../shared/data/hn-gold.json")
ap.add_argument("--out", default="examples/hn-postings.jsonl")
ap.add_argument("--n", type=int, default=4)
a = ap.parse_args()
cases = json.load(open(a.src))["test_cases"]
with open(a.out, "w") as f:
    for c in cases[: a.n]:
        t = c["comment"]["content"]
        t = re.sub(r"<p>", "\n\n", t)
        t = re.sub(r"<[^>]+>", "", t)
        t = html.unescape(t).strip()
        f.write(json.dumps({"id": "hn-" + c["id"], "source": t}, ensure_ascii=False) + "\n")
print("wrote", a.out)
