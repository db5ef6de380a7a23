#!/usr/bin/env python3
r"""Grammar-constrained decoding baselines: jobx-engine vs XGrammar vs llguidance, same inputs.

Every engine gets the same JSON schema (jobx's built-in job schema, from `BIN schema print job`),
the same tokenizer.json vocabularies and the same documents, in one run:

  documents   the `expected_json` strings of an eval-results file (default: shared/seed/eval-results/
              flan_t5_large_eval.json, 1000 docs). Each is parsed and re-dumped with json.dumps
              (ensure_ascii, separators ", " / ": ": the surface the models trained on); documents
              that do not validate against the schema are skipped, as `grammar bench` skips them.
  tokens      each document is tokenised with the real tokenizer (transformers AutoTokenizer from the
              tokenizer folder, add_special_tokens=False) and EOS is appended when missing, exactly as
              `jobx-engine grammar bench` does (it uses the Rust `tokenizers` crate with the same
              tokenizer.json, no special tokens). Before each token (EOS included) the full mask
              computation is timed, then the token is accepted.
  masks       XGrammar: GrammarMatcher.fill_next_token_bitmask into a preallocated int32 bitmask
              (xgr.allocate_token_bitmask), one new GrammarMatcher per document from one
              CompiledGrammar.
              llguidance: LLMatcher.unsafe_compute_mask_ptr into a preallocated int32 numpy buffer
              (what llguidance.numpy.fill_next_token_bitmask calls, without its Python asserts); one
              LLMatcher per vocabulary, reset() between documents (its lazily built lexer/mask
              caches stay warm across documents: the best case for llguidance).
              Each mask is timed with time.perf_counter_ns() around the one call, so Python call
              overhead (~0.1-0.3 us) is included; the timer's own overhead is reported per row.
              jobx: Matcher::compute_mask timed in Rust with Instant (no FFI/Python overhead).
  compile     XGrammar: GrammarCompiler(tokenizer_info, max_threads=1, cache_enabled=False) built
              fresh per repetition, compile_json_schema(schema, any_whitespace=False,
              separators=(", ", ": "), strict_mode=True) timed (TokenizerInfo built once per
              vocabulary, outside the timing).
              llguidance: LLMatcher.grammar_from_json_schema(schema, overrides={whitespace_flexible:
              false, item_separator: ", ", key_separator: ": ", json_allow_general_unicode_escapes:
              true}) + LLMatcher(tokenizer, grammar)
              timed (LLTokenizer built once per vocabulary, outside the timing). llguidance builds
              most of its lexer lazily, so its compile time is small and its first masks are slower.
              jobx: `compile_ms` of `grammar bench` (Grammar::compile; the per-vocabulary index,
              Vocab::prepare, is outside it). `grammar bench` compiles once per run, so jobx is run
              --compiles times and compile_ms is the median over runs; its mask statistics are those
              of the first run (all runs' numbers are kept under "runs").
  threads     single-threaded wherever the library allows: XGrammar max_threads=1 (mask filling is
              single-threaded), llguidance single LLMatcher calls (no LLExecutor/rayon pool),
              RAYON_NUM_THREADS=OMP_NUM_THREADS=1, torch.set_num_threads(1); jobx `--threads 1
              --device cpu` (its grammar module is single-threaded anyway).

Variants. Hugging Face SentencePiece tokenizers prepend '▁' to the text, so every document's
first token carries a space (Mistral '▁{"', text ' {"'; T5 a lone '▁'). jobx applies the
decoders' first-token rule (the leading space of the first token is dropped); XGrammar and
llguidance read the space, which the no-whitespace grammar rejects. The "exact tokens" rows walk the
real tokenisation as it is (and record those rejections); for XGrammar and llguidance a second row,
"first token without leading ▁", replaces the first token by the vocabulary's token for the rest
of its piece (Mistral '{"', same token count) or drops a lone '▁' (T5), rest unchanged.
Unicode escapes: json.dumps(ensure_ascii=True) writes non-ASCII as \uXXXX; llguidance by default
allows only \u00XX escapes, so json_allow_general_unicode_escapes=true is set (turn it off with
--llguidance-default-escapes to see the rejections). T5: its vocabulary has no '{', '}' or '\', which
its tokenizer turns into <unk>; jobx maps <unk> to them, the other engines cannot (see the errors).

Each (engine, vocabulary) runs in its own subprocess (one after the other), so a crash or a refusal
is recorded as that row's error instead of ending the run.

Statistics: median / p99 / max over every timed mask of the documents that were walked to the end
(nearest-rank on the sorted list, like `grammar bench`); compile_ms = median of --compiles compiles.
A document whose token the engine rejects is counted in `failed_documents` and its masks are left
out of the statistics (`grammar bench` aborts the whole run on a rejection); the first rejections
are listed under `errors` with the token id and piece.

Output: one JSON line per (engine, vocabulary) with documents, tokens, median_us, p99_us, max_us,
compile_ms, errors (plus details), then a summary table; --out FILE writes everything as JSON.

Usage:
  /work/pyref/venv/bin/python tools/bench_grammar_baselines.py --out /tmp/grammar-baselines.json
  ... --engines xgrammar,llguidance --vocabs mistral --limit 20      # quick smoke test
"""

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DEFAULT_BIN = os.path.join(REPO, "target", "release", "jobx-engine")
DEFAULT_DOCS = os.path.normpath(os.path.join(REPO, "..", "shared", "seed", "eval-results",
                                             "flan_t5_large_eval.json"))
if not os.path.exists(DEFAULT_DOCS):
    DEFAULT_DOCS = "/work/shared/seed/eval-results/flan_t5_large_eval.json"
VOCABS = {
    "mistral": os.path.join(REPO, "tests", "fixtures", "tokenizers", "mistral-7b-v0.1"),
    "t5": os.path.join(REPO, "tests", "fixtures", "tokenizers", "t5"),
}
ENGINES = ["jobx", "xgrammar", "llguidance"]
SEPARATORS = (", ", ": ")
MAX_ERRORS_LISTED = 5


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------

def single_thread_env():
    for k in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "TOKENIZERS_PARALLELISM"):
        os.environ[k] = "false" if k == "TOKENIZERS_PARALLELISM" else "1"


def stats_us(times_ns):
    """median / p99 / max in microseconds, nearest rank on the sorted list (as grammar bench)."""
    if not times_ns:
        return {"median_us": None, "p99_us": None, "max_us": None}
    s = sorted(times_ns)

    def pct(p):
        return s[min(int(round((len(s) - 1) * p)), len(s) - 1)] / 1e3

    return {"median_us": pct(0.5), "p99_us": pct(0.99), "max_us": s[-1] / 1e3}


def timer_overhead_ns(n=20000):
    """Median cost of two back-to-back perf_counter_ns() calls (what an empty timed region costs)."""
    pc = time.perf_counter_ns
    d = []
    for _ in range(n):
        a = pc()
        b = pc()
        d.append(b - a)
    d.sort()
    return d[len(d) // 2]


def load_schema(binary):
    out = subprocess.run([binary, "schema", "print", "job"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validates(schema, v):
    """Enough of JSON Schema for the job schema (type/properties/required/additionalProperties/
    items); anything else in the schema makes it raise, so a changed schema is noticed."""
    for k in schema:
        if k not in ("type", "properties", "required", "additionalProperties", "items", "title",
                     "description", "$schema", "$id"):
            raise ValueError(f"validator: unsupported keyword {k!r}")
    t = schema.get("type")
    if t is not None:
        names = t if isinstance(t, list) else [t]
        if not any(_TYPES[n](v) for n in names):
            return False
    if isinstance(v, dict):
        props = schema.get("properties", {})
        if any(r not in v for r in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and any(k not in props for k in v):
            return False
        return all(validates(props[k], x) for k, x in v.items() if k in props)
    if isinstance(v, list) and "items" in schema:
        return all(validates(schema["items"], x) for x in v)
    return True


def load_documents(path, schema, limit):
    """Returns (texts, info): json.dumps text of each schema-valid expected_json, in file order."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    records = data["evaluation_results"] if isinstance(data, dict) else data
    texts, skipped, redumped_differs = [], 0, 0
    for r in records:
        if limit is not None and len(texts) + skipped >= limit:
            break
        s = r["expected_json"]
        doc = json.loads(s)
        if not validates(schema, doc):
            skipped += 1
            continue
        text = json.dumps(doc)
        redumped_differs += text != s
        texts.append(text)
    return texts, {"records_used": len(texts) + skipped, "skipped_invalid": skipped,
                   "redump_differs_from_expected_json": redumped_differs}


# ----------------------------------------------------------------------------------------------
# Python engines (run in a worker subprocess)
# ----------------------------------------------------------------------------------------------

def tokenize_all(hf_tok, texts):
    eos = hf_tok.eos_token_id
    out = []
    for t in texts:
        ids = list(hf_tok.encode(t, add_special_tokens=False))
        if not ids or ids[-1] != eos:
            ids.append(eos)
        out.append(ids)
    return out


def piece(hf_tok, tid):
    try:
        return hf_tok.convert_ids_to_tokens(int(tid))
    except Exception:  # noqa: BLE001
        return None


def first_token_sans_space(hf_tok, docs):
    """The "no leading space" variant: the first token of each document without its leading '▁'
    (replaced by the vocabulary's token for the rest of the piece, dropped when it is a lone '▁').
    Hugging Face SentencePiece tokenizers prepend '▁' to the text, so document tokens start with
    e.g. Mistral '▁{"' (text ' {"'); jobx reads a first token without its leading space (the
    decoder's first-token rule), XGrammar/llguidance read the space and, with no whitespace allowed,
    reject it. Returns (docs, note) or (None, note)."""
    vocab = hf_tok.get_vocab()
    out, changed, missing = [], 0, 0
    for ids in docs:
        p = piece(hf_tok, ids[0]) if ids else None
        if p and p.startswith("\u2581"):
            rest = p[1:]
            if rest == "":
                out.append(ids[1:])
                changed += 1
                continue
            if rest in vocab:
                out.append([vocab[rest]] + ids[1:])
                changed += 1
                continue
            missing += 1
        out.append(ids)
    note = f"first token changed in {changed} of {len(docs)} documents; rest-of-piece missing from vocab: {missing}"
    return (out if changed else None), note


def walk(docs, hf_tok, new_doc, mask, accept, why_rejected):
    """Walks every document; returns the row's mask statistics and rejection errors."""
    times, failed, failed_masks, first_doc = [], 0, [], None
    errors = []
    pc = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for i, ids in enumerate(docs):
            new_doc()
            doc_times = []
            ok = True
            for k, tid in enumerate(ids):
                t0 = pc()
                mask()
                t1 = pc()
                doc_times.append(t1 - t0)
                if not accept(tid):
                    ok = False
                    failed += 1
                    failed_masks.extend(doc_times)
                    if len(errors) < MAX_ERRORS_LISTED:
                        errors.append(f"document {i}: token {k} (id {tid}, piece {piece(hf_tok, tid)!r}) "
                                      f"rejected{why_rejected()}")
                    break
            if ok:
                times.extend(doc_times)
                if first_doc is None:
                    first_doc = stats_us(doc_times)
    finally:
        gc.enable()
    if failed:
        errors.append(f"{failed} of {len(docs)} documents had a token rejected "
                      f"(listed: first {min(failed, MAX_ERRORS_LISTED)})")
    row = {"documents": len(docs) - failed, "tokens": len(times), **stats_us(times)}
    extra = {"failed_documents": failed, "masks_in_failed_documents": len(failed_masks),
             "failed_documents_mask_stats": stats_us(failed_masks), "first_document_mask_stats": first_doc}
    return row, errors, extra


def run_xgrammar(args, schema, texts, tok_dir):
    import torch
    torch.set_num_threads(1)
    import transformers
    import xgrammar as xgr

    from importlib.metadata import version as pkg_version
    res = {"version": pkg_version("xgrammar"),
           "settings": {"max_threads": 1, "cache_enabled": False, "any_whitespace": False,
                        "separators": list(SEPARATORS), "strict_mode": True,
                        "mask_call": "GrammarMatcher.fill_next_token_bitmask(int32 bitmask)"}}
    errors = []
    hf_tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    res["hf_tokenizer_class"] = type(hf_tok).__name__
    docs = tokenize_all(hf_tok, texts)
    res["tokens_with_eos"] = sum(len(d) for d in docs)
    try:
        info = xgr.TokenizerInfo.from_huggingface(hf_tok)
    except Exception as e:  # noqa: BLE001
        res.update(documents=0, tokens=0, **stats_us([]), compile_ms=None,
                   errors=[f"TokenizerInfo.from_huggingface failed: {type(e).__name__}: {e}"])
        return res
    res["tokenizer_info"] = {"vocab_type": str(info.vocab_type), "vocab_size": info.vocab_size,
                             "add_prefix_space": info.add_prefix_space,
                             "stop_token_ids": list(info.stop_token_ids),
                             "special_token_ids_count": len(info.special_token_ids)}
    # How XGrammar decodes the first tokens of document 0 (shows whether '▁' is read as a space).
    dv = info.decoded_vocab
    res["decoded_first_tokens_doc0"] = [[tid, piece(hf_tok, tid), dv[tid].decode("utf-8", "replace")]
                                        for tid in docs[0][:6]] if docs else []
    schema_str = json.dumps(schema)

    def compile_once():
        compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        t0 = time.perf_counter()
        cg = compiler.compile_json_schema(schema_str, any_whitespace=False, separators=SEPARATORS,
                                          strict_mode=True)
        return cg, (time.perf_counter() - t0) * 1e3

    compile_times, cg = [], None
    try:
        for _ in range(args.compiles):
            cg, ms = compile_once()
            compile_times.append(ms)
    except Exception as e:  # noqa: BLE001
        res.update(documents=0, tokens=0, **stats_us([]), compile_ms=None,
                   errors=[f"compile_json_schema failed: {type(e).__name__}: {e}"])
        return res
    res["compile_ms_all"] = compile_times
    res["compiled_memory_bytes"] = cg.memory_size_bytes
    bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
    state = {}

    def new_doc():
        state["m"] = xgr.GrammarMatcher(cg)
        state["fill"] = state["m"].fill_next_token_bitmask
        state["accept"] = state["m"].accept_token

    def mask():
        state["fill"](bitmask)

    def accept(tid):
        return state["accept"](tid)

    res["compile_ms"] = statistics.median(compile_times)

    def one_walk(d):
        try:
            row, werr, extra = walk(d, hf_tok, new_doc, mask, accept, lambda: "")
        except Exception as e:  # noqa: BLE001
            return {"documents": 0, "tokens": 0, **stats_us([]), "errors": [f"walk failed: {type(e).__name__}: {e}"]}
        return {**row, "errors": werr, **extra}

    res.update(one_walk(docs))
    res["errors"] = errors + res["errors"]
    variant_docs, note = first_token_sans_space(hf_tok, docs)
    res["variant_note"] = note
    if variant_docs is not None:
        res["variant_no_leading_space"] = {"tokens_with_eos": sum(len(d) for d in variant_docs),
                                           **one_walk(variant_docs)}
    return res


def run_llguidance(args, schema, texts, tok_dir):
    import numpy as np
    import transformers
    import llguidance
    import llguidance.hf

    overrides = {"whitespace_flexible": False, "item_separator": SEPARATORS[0],
                 "key_separator": SEPARATORS[1]}
    if not args.llguidance_default_escapes:
        # json.dumps(ensure_ascii=True) writes every non-ASCII character as \uXXXX; llguidance's
        # default grammar only allows \u00XX (control characters) and rejects e.g. \u2019.
        overrides["json_allow_general_unicode_escapes"] = True
    res = {"version": llguidance.__version__,
           "settings": {"json_overrides": overrides, "slices": "default (general_slices)",
                        "matcher": "one LLMatcher per vocabulary, reset() per document",
                        "mask_call": "LLMatcher.unsafe_compute_mask_ptr(int32 numpy buffer)"}}
    hf_tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    res["hf_tokenizer_class"] = type(hf_tok).__name__
    docs = tokenize_all(hf_tok, texts)
    res["tokens_with_eos"] = sum(len(d) for d in docs)
    try:
        t0 = time.perf_counter()
        lltok = llguidance.hf.from_tokenizer(hf_tok)
        res["tokenizer_build_ms"] = (time.perf_counter() - t0) * 1e3
    except BaseException as e:  # noqa: BLE001 (a Rust panic surfaces as PanicException)
        res.update(documents=0, tokens=0, **stats_us([]), compile_ms=None,
                   errors=[f"llguidance.hf.from_tokenizer failed: {type(e).__name__}: {e}"])
        return res
    res["lltokenizer"] = {"vocab_size": lltok.vocab_size, "eos_tokens": list(lltok.eos_tokens),
                          "is_canonical": lltok.is_canonical}

    def compile_once():
        t0 = time.perf_counter()
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=overrides)
        m = llguidance.LLMatcher(lltok, grammar, log_level=1)
        ms = (time.perf_counter() - t0) * 1e3
        if m.is_error():
            raise RuntimeError(f"LLMatcher error: {m.get_error()}")
        return m, ms

    compile_times, m = [], None
    try:
        for _ in range(args.compiles):
            m, ms = compile_once()
            compile_times.append(ms)
    except BaseException as e:  # noqa: BLE001
        res.update(documents=0, tokens=0, **stats_us([]), compile_ms=None,
                   errors=[f"grammar/matcher construction failed: {type(e).__name__}: {e}"])
        return res
    res["compile_ms_all"] = compile_times
    warnings = m.get_grammar_warnings()
    if warnings:
        res["grammar_warnings"] = warnings
    res["compile_ms"] = statistics.median(compile_times)
    words = (lltok.vocab_size + 31) // 32
    buf = np.full(words, -1, dtype=np.int32)
    ptr, nbytes = buf.ctypes.data, buf.nbytes
    st = {"m": m, "rebuilt": 0}

    def new_doc():
        # A matcher that rejected a token stays in its error state (reset() fails): build a new
        # one (outside the timing; its caches start cold again, which only the max can show).
        if st["m"].is_error() or not st["m"].reset():
            st["m"], _ = compile_once()
            st["rebuilt"] += 1
        st["compute"] = st["m"].unsafe_compute_mask_ptr
        st["consume"] = st["m"].consume_token

    def mask():
        st["compute"](ptr, nbytes)

    def consume(tid):
        return st["consume"](tid)

    def why():
        e = st["m"].get_error() if st["m"].is_error() else ""
        return ": " + e.split("\n")[0][:300] if e else ""

    def one_walk(d):
        st["rebuilt"] = 0
        try:
            row, werr, extra = walk(d, hf_tok, new_doc, mask, consume, why)
        except BaseException as e:  # noqa: BLE001
            return {"documents": 0, "tokens": 0, **stats_us([]), "errors": [f"walk failed: {type(e).__name__}: {e}"]}
        return {**row, "errors": werr, **extra, "matchers_rebuilt_after_error": st["rebuilt"]}

    res.update(one_walk(docs))
    variant_docs, note = first_token_sans_space(hf_tok, docs)
    res["variant_note"] = note
    if variant_docs is not None:
        st["m"], _ = compile_once()  # fresh matcher: the variant starts with cold caches too
        res["variant_no_leading_space"] = {"tokens_with_eos": sum(len(d) for d in variant_docs),
                                           **one_walk(variant_docs)}
    return res


def worker(args):
    single_thread_env()
    schema = json.load(open(args.worker_schema, encoding="utf-8"))
    texts = json.load(open(args.worker_texts, encoding="utf-8"))
    tok_dir = VOCABS[args.worker_vocab] if args.worker_vocab in VOCABS else args.worker_vocab
    res = {"engine": args.worker_engine, "vocabulary": args.worker_vocab}
    res["timer_overhead_ns"] = timer_overhead_ns()
    fn = {"xgrammar": run_xgrammar, "llguidance": run_llguidance}[args.worker_engine]
    res.update(fn(args, schema, texts, tok_dir))
    print("RESULT " + json.dumps(res), flush=True)


# ----------------------------------------------------------------------------------------------
# jobx (the release binary)
# ----------------------------------------------------------------------------------------------

def run_jobx(args, vocab, docs_path):
    tok_json = os.path.join(VOCABS[vocab], "tokenizer.json")
    cmd = [args.bin, "grammar", "bench", "--schema", "job", "--tokenizer", tok_json,
           "--documents", docs_path, "--threads", "1", "--device", "cpu"]
    res = {"engine": "jobx", "vocabulary": vocab, "command": " ".join(cmd),
           "settings": {"threads": 1, "device": "cpu",
                        "mask_call": "Matcher::compute_mask (timed in Rust)",
                        "compile_ms": f"median of {args.compiles} runs of grammar bench"}}
    runs, errors = [], []
    for _ in range(args.compiles):
        p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, RAYON_NUM_THREADS="1"))
        if p.returncode != 0:
            errors.append(f"exit {p.returncode}: {p.stderr.strip()[-800:]}")
            break
        lines = [l for l in p.stdout.splitlines() if l.strip().startswith("{")]
        try:
            runs.append(json.loads(lines[-1]))
        except (IndexError, json.JSONDecodeError) as e:
            errors.append(f"could not parse the summary line: {e}: {p.stdout[-400:]}")
            break
        if p.stderr.strip():
            res["stderr"] = p.stderr.strip()[-400:]
    res["runs"] = runs
    if runs:
        first = runs[0]
        res.update({k: first.get(k) for k in ("documents", "tokens", "median_us", "p99_us", "max_us")})
        res["compile_ms"] = statistics.median(r["compile_ms"] for r in runs)
        res["compile_ms_all"] = [r["compile_ms"] for r in runs]
    else:
        res.update(documents=0, tokens=0, **stats_us([]), compile_ms=None)
    res["errors"] = errors
    return res


def jobx_version(binary):
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    except OSError as e:
        return f"unavailable: {e}"


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------

def run_python_engine(args, engine, vocab, schema_path, texts_path):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker-engine", engine, "--worker-vocab", vocab,
           "--worker-schema", schema_path, "--worker-texts", texts_path, "--compiles", str(args.compiles)]
    if args.llguidance_default_escapes:
        cmd.append("--llguidance-default-escapes")
    env = dict(os.environ)
    for k in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    wall = time.perf_counter() - t0
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
            res["wall_s"] = round(wall, 1)
            tail = p.stderr.strip()
            if tail:
                res["stderr_tail"] = tail[-1500:]
            return res
    return {"engine": engine, "vocabulary": vocab, "documents": 0, "tokens": 0, **stats_us([]),
            "compile_ms": None, "wall_s": round(wall, 1),
            "errors": [f"worker exited {p.returncode} without a result: {p.stderr.strip()[-1500:]}"]}


def fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def summary_table(rows):
    head = ["engine", "vocab", "tokens_fed", "docs", "tokens", "median_us", "p99_us", "max_us", "compile_ms", "errors"]
    body = []
    for r in rows:
        err = r.get("errors") or []
        body.append([r["engine"], r["vocabulary"],
                     "exact" if r.get("variant", "exact tokens") == "exact tokens" else "no-lead-\u2581",
                     fmt(r.get("documents")), fmt(r.get("tokens")),
                     fmt(r.get("median_us"), 3), fmt(r.get("p99_us"), 3), fmt(r.get("max_us"), 1),
                     fmt(r.get("compile_ms"), 2), (err[-1] if len(err) > 1 else err[0])[:90] if err else ""])
    w = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w[i]) for i, h in enumerate(head)),
             "  ".join("-" * w[i] for i in range(len(head)))]
    lines += ["  ".join(c.ljust(w[i]) for i, c in enumerate(b)) for b in body]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=DEFAULT_BIN, help="jobx-engine release binary")
    ap.add_argument("--documents", default=DEFAULT_DOCS, help="eval-results JSON with expected_json")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--vocabs", default=",".join(VOCABS), help="mistral,t5")
    ap.add_argument("--compiles", type=int, default=5, help="compile repetitions (median reported)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N records")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per Python engine worker")
    ap.add_argument("--out", default=None, help="write all results as JSON here")
    ap.add_argument("--llguidance-default-escapes", action="store_true",
                    help="do not set json_allow_general_unicode_escapes (llguidance then rejects "
                         "json.dumps's \\uXXXX escapes above \\u00ff)")
    ap.add_argument("--worker-engine", help=argparse.SUPPRESS)
    ap.add_argument("--worker-vocab", help=argparse.SUPPRESS)
    ap.add_argument("--worker-schema", help=argparse.SUPPRESS)
    ap.add_argument("--worker-texts", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_engine:
        worker(args)
        return 0

    engines = [e for e in args.engines.split(",") if e]
    vocabs = [v for v in args.vocabs.split(",") if v]
    for e in engines:
        if e not in ENGINES:
            ap.error(f"unknown engine {e}")
    for v in vocabs:
        if v not in VOCABS:
            ap.error(f"unknown vocabulary {v}")

    schema = load_schema(args.bin)
    texts, doc_info = load_documents(args.documents, schema, args.limit)
    tmp = tempfile.mkdtemp(prefix="bench-grammar-")
    schema_path = os.path.join(tmp, "schema.json")
    texts_path = os.path.join(tmp, "texts.json")
    json.dump(schema, open(schema_path, "w", encoding="utf-8"))
    json.dump(texts, open(texts_path, "w", encoding="utf-8"))
    if args.limit is None:
        jobx_docs = args.documents
    else:  # the same first N records, as JSONL of {"expected_json": ...}
        jobx_docs = os.path.join(tmp, "docs.jsonl")
        with open(args.documents, encoding="utf-8") as f:
            data = json.load(f)
        records = data["evaluation_results"] if isinstance(data, dict) else data
        with open(jobx_docs, "w", encoding="utf-8") as f:
            for r in records[:args.limit]:
                f.write(json.dumps({"expected_json": r["expected_json"]}) + "\n")

    versions = {"jobx-engine": jobx_version(args.bin), "python": platform.python_version()}
    for mod in ("xgrammar", "llguidance", "transformers", "tokenizers", "torch"):
        try:
            from importlib.metadata import version
            versions[mod] = version(mod)
        except Exception:  # noqa: BLE001
            versions[mod] = None

    rows = []
    for v in vocabs:
        for e in engines:
            if e == "jobx":
                r = run_jobx(args, v, jobx_docs)
            else:
                r = run_python_engine(args, e, v, schema_path, texts_path)
            r.setdefault("variant", "exact tokens")
            new_rows = [r]
            var = r.pop("variant_no_leading_space", None)
            if var is not None:
                new_rows.append({"engine": e, "vocabulary": v, "variant": "first token without leading \u2581",
                                 "compile_ms": r.get("compile_ms"), "compile_ms_all": r.get("compile_ms_all"),
                                 "version": r.get("version"), "note": r.get("variant_note"), **var})
            keys = ["engine", "vocabulary", "variant", "documents", "tokens", "median_us", "p99_us", "max_us",
                    "compile_ms", "errors"]
            for nr in new_rows:
                rows.append(nr)
                print(json.dumps({k: nr.get(k) for k in keys}), flush=True)

    table = summary_table(rows)
    print()
    print(table)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable] + sys.argv),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": versions,
        "documents_file": args.documents,
        "documents_info": doc_info,
        "compiles": args.compiles,
        "rows": rows,
        "table": table,
    }
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
