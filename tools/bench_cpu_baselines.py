#!/usr/bin/env python3
"""CPU baselines for greedy generation: HF transformers (torch), CTranslate2 f32/int8, and jobx.

Every engine runs the same random checkpoint with the same token ids and thread count, generates a
fixed number of new tokens with EOS suppressed, and is timed as: one warm-up run, then the median of
`--reps` runs. Output: one JSON line per (engine, batch), then a JSON summary (also written to
`--out`).

Shapes:
  --arch t5       flan-t5-small shaped (d_model 512, 8+8 layers, 6 heads x d_kv 64, d_ff 1024,
                  vocab 32128, gated-gelu, untied lm_head); 512-token source, 128 new tokens.
  --arch mistral  hidden 512, 8 layers, 8 query / 2 KV heads (head_dim 64), intermediate 1792,
                  vocab 32000, no sliding window; 256-token prompt, 128 new tokens (HF + jobx only).

Usage:
  python tools/bench_cpu_baselines.py --make-model /tmp/bench-t5small            # once
  python tools/bench_cpu_baselines.py --model /tmp/bench-t5small --threads 2 \\
      --out docs/bench-baselines-cpu.json [--jobx target/release/jobx-engine]
  python tools/bench_cpu_baselines.py --arch mistral --make-model /tmp/bench-mistral-small
  python tools/bench_cpu_baselines.py --arch mistral --model /tmp/bench-mistral-small --jobx BIN

jobx is timed as a subprocess (model load included, reported as `includes_load: true`):
  BIN generate --model DIR --input-ids FILE --max-new-tokens N --min-new-tokens N --threads T
where FILE holds a JSON array of ids (batch 1) or an array of arrays (a batch).

CTranslate2: the checkpoint is converted once to `<model>-ct2` with TransformersConverter (f32
weights; int8 is quantized at load with compute_type="int8"). No tokenizer is needed: the converter
gets a synthetic id<->token vocabulary. Note: with transformers 5.x, T5Config.tie_word_embeddings
is always True, and ctranslate2 4.8's T5 loader uses it to decide the d_model**-0.5 output
scaling; the conversion here restores the checkpoint's real setting before converting (otherwise
an untied FLAN-T5 gets scaled logits). If ctranslate2 is not importable its rows are "skipped".
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ARCH_DEFAULTS = {
    "t5": dict(model="/tmp/bench-t5small", src_len=512, new_tokens=128),
    "mistral": dict(model="/tmp/bench-mistral-small", src_len=256, new_tokens=128),
}
SEED = 1234


# ----------------------------------------------------------------------------------------------
# Random checkpoints
# ----------------------------------------------------------------------------------------------

def make_model(arch, out_dir, force):
    import torch
    if os.path.exists(os.path.join(out_dir, "config.json")) and not force:
        print(f"{out_dir} already holds a checkpoint (use --force to rewrite)", file=sys.stderr)
        return
    torch.manual_seed(SEED)
    if arch == "t5":
        from transformers import T5Config, T5ForConditionalGeneration
        cfg = T5Config(
            vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8,
            num_heads=6, relative_attention_num_buckets=32, relative_attention_max_distance=128,
            dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        )
        model = T5ForConditionalGeneration(cfg)
        # transformers 5 ties lm_head to `shared` even for untied configs: give it its own weights
        # (as FLAN-T5 has) so the checkpoint has the real FLAN-T5 layout.
        with torch.no_grad():
            model.lm_head.weight = torch.nn.Parameter(torch.randn(cfg.vocab_size, cfg.d_model))
        model.all_tied_weights_keys.pop("lm_head.weight", None)
    else:
        from transformers import MistralConfig, MistralForCausalLM
        cfg = MistralConfig(
            vocab_size=32000, hidden_size=512, intermediate_size=1792, num_hidden_layers=8,
            num_attention_heads=8, num_key_value_heads=2, head_dim=64, sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            max_position_embeddings=4096, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )
        model = MistralForCausalLM(cfg)
    model.eval()
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    model.save_pretrained(out_dir)
    # Make config.json look like a real checkpoint's (see tools/gen_reference.py).
    path = os.path.join(out_dir, "config.json")
    with open(path) as f:
        c = json.load(f)
    if arch == "t5":
        c["tie_word_embeddings"] = False
        c.pop("scale_decoder_outputs", None)
    else:
        c["rope_theta"] = 1e6
    with open(path, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
    print(f"wrote random {arch} checkpoint to {out_dir}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------

def make_inputs(arch, vocab, batch, src_len):
    """Seeded random ids, no padding; special ids (0, 1, 2) avoided."""
    import torch
    gen = torch.Generator().manual_seed(SEED + batch)
    return torch.randint(3, vocab, (batch, src_len), generator=gen, dtype=torch.long)


# ----------------------------------------------------------------------------------------------
# Engines. Each returns (list of per-run seconds, generated ids of the last run as lists).
# ----------------------------------------------------------------------------------------------

def _cpu_time():
    """CPU seconds used by this process and its finished children (all threads)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


CPU_TIMES = []  # per-run CPU seconds of the last time_runs call (less sensitive to other load)


def time_runs(fn, reps):
    fn()  # warm-up
    times, out = [], None
    CPU_TIMES.clear()
    for _ in range(reps):
        c0 = _cpu_time()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        CPU_TIMES.append(_cpu_time() - c0)
    return times, out


def bench_hf(arch, model_dir, ids, new_tokens, threads, reps):
    import torch
    torch.set_num_threads(threads)
    if arch == "t5":
        from transformers import T5ForConditionalGeneration as cls
    else:
        from transformers import MistralForCausalLM as cls
    model = cls.from_pretrained(model_dir, dtype=torch.float32).eval()
    mask = torch.ones_like(ids)
    skip = 1 if arch == "t5" else ids.shape[1]

    def run():
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            )
        return out[:, skip:].tolist()

    times, out = time_runs(run, reps)
    extra = dict(attn_implementation=model.config._attn_implementation, torch=torch.__version__)
    return times, out, extra


class _Vocab:
    """Minimal stand-in for a HF tokenizer: what ctranslate2's T5 loader needs."""

    pad_token, eos_token, unk_token = "<pad>", "</s>", "<unk>"

    def __init__(self, size):
        self.tokens = ["<pad>", "</s>", "<unk>"] + [f"t{i}" for i in range(3, size)]

    def get_vocab(self):
        return {t: i for i, t in enumerate(self.tokens)}

    def convert_ids_to_tokens(self, i):
        return self.tokens[i]


def ct2_convert(model_dir, ct2_dir, vocab_size):
    import ctranslate2

    class Converter(ctranslate2.converters.TransformersConverter):
        def load_model(self, model_class, path, **kwargs):
            model = super().load_model(model_class, path, **kwargs)
            # transformers 5 forces T5Config.tie_word_embeddings=True; ctranslate2 reads it to
            # decide the output scaling. Restore the checkpoint's real value.
            if hasattr(model.config, "scale_decoder_outputs"):
                model.config.tie_word_embeddings = bool(model.config.scale_decoder_outputs)
            return model

        def load_tokenizer(self, tokenizer_class, path, **kwargs):
            return _Vocab(vocab_size)

    if os.path.exists(os.path.join(ct2_dir, "model.bin")):
        return
    Converter(model_dir).convert(ct2_dir, quantization=None, force=True)


def bench_ct2(model_dir, ct2_dir, ids, new_tokens, threads, reps, compute_type, vocab_size):
    import ctranslate2
    ct2_convert(model_dir, ct2_dir, vocab_size)
    tr = ctranslate2.Translator(ct2_dir, device="cpu", compute_type=compute_type,
                                intra_threads=threads, inter_threads=1)
    toks = _Vocab(vocab_size)
    index = toks.get_vocab()
    src = [[toks.tokens[i] for i in row] for row in ids.tolist()]

    def run():
        res = tr.translate_batch(
            src, beam_size=1, max_decoding_length=new_tokens, min_decoding_length=new_tokens,
            max_input_length=0, return_scores=False,
        )
        return [[index[t] for t in r.hypotheses[0]] for r in res]

    times, out = time_runs(run, reps)
    return times, out, dict(ctranslate2=ctranslate2.__version__, compute_type=compute_type)


def bench_jobx(binary, model_dir, ids, new_tokens, threads, reps, extra_args):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ids.json")
        rows = ids.tolist()
        with open(path, "w") as f:
            json.dump(rows[0] if len(rows) == 1 else rows, f)
        # --device cpu: the comparison is with CPU engines, and auto would take a GPU where one opens
        cmd = [binary, "--device", "cpu", "generate", "--model", model_dir, "--input-ids", path,
               "--max-new-tokens", str(new_tokens), "--min-new-tokens", str(new_tokens),
               "--num-beams", "1", "--threads", str(threads)] + extra_args  # greedy, like the baselines
        last = {}

        def run():
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                raise RuntimeError(f"jobx failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
            last["stdout"] = p.stdout
            return None

        times, _ = time_runs(run, reps)
    out = None
    try:  # the generated ids, to check agreement with HF like the other engines
        ids_out = json.loads(last.get("stdout", "").strip().splitlines()[-1])["ids"]
        out = ids_out if ids_out and isinstance(ids_out[0], list) else [ids_out]
    except (ValueError, KeyError, IndexError):
        pass
    return times, out, dict(command=" ".join(cmd[:2] + ["..."]),
                            stdout_tail=last.get("stdout", "")[-500:])


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------

def agree_prefix(a, b):
    """Per row: number of leading ids two engines agree on."""
    out = []
    for ra, rb in zip(a, b):
        n = 0
        for x, y in zip(ra, rb):
            if x != y:
                break
            n += 1
        out.append(n)
    return out


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=["t5", "mistral"], default="t5")
    ap.add_argument("--make-model", metavar="DIR", help="write the random checkpoint to DIR and exit")
    ap.add_argument("--force", action="store_true", help="with --make-model: overwrite")
    ap.add_argument("--model", metavar="DIR", help="checkpoint to benchmark (default per arch)")
    ap.add_argument("--ct2-dir", metavar="DIR", help="CTranslate2 conversion (default <model>-ct2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--src-len", type=int, help="source/prompt length (default 512 t5, 256 mistral)")
    ap.add_argument("--new-tokens", type=int, help="new tokens per sequence (default 128)")
    ap.add_argument("--engines", default=None,
                    help="comma-separated subset of hf,ct2-f32,ct2-int8 (default: all three for "
                         "t5, hf for mistral; ct2 is t5 only here)")
    ap.add_argument("--jobx", metavar="BIN", help="also time this jobx-engine binary")
    ap.add_argument("--jobx-arg", action="append", default=[], help="extra argument for jobx")
    ap.add_argument("--out", metavar="FILE", help="write the summary JSON here")
    ap.add_argument("--note", help="free text stored in the summary (e.g. machine conditions)")
    args = ap.parse_args()

    d = ARCH_DEFAULTS[args.arch]
    if args.make_model:
        make_model(args.arch, args.make_model, args.force)
        return
    model_dir = args.model or d["model"]
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        ap.error(f"{model_dir} has no checkpoint; run with --make-model {model_dir} first")
    src_len = args.src_len or d["src_len"]
    new_tokens = args.new_tokens or d["new_tokens"]
    ct2_dir = args.ct2_dir or model_dir.rstrip("/") + "-ct2"
    batches = [int(b) for b in args.batches.split(",")]
    engines_arg = args.engines or ("hf,ct2-f32,ct2-int8" if args.arch == "t5" else "hf")
    engines = [e for e in engines_arg.split(",") if e]

    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    with open(os.path.join(model_dir, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]

    results = []

    def emit(row):
        results.append(row)
        print(json.dumps(row), flush=True)

    for batch in batches:
        ids = make_inputs(args.arch, vocab, batch, src_len)
        outputs = {}
        plan = [(e, None) for e in engines]
        if args.jobx:
            # jobx first: once CTranslate2 has run in this process its worker threads can stay
            # busy and slow a subprocess 2-3x (observed on the 2-core machine).
            plan.insert(0, ("jobx", None))
        for engine, _ in plan:
            row = dict(engine=engine, arch=args.arch, batch=batch, threads=args.threads,
                       src_len=src_len, new_tokens_per_seq=new_tokens)
            # Other work on the machine skews timings: record the 1-minute load before and after.
            load_before = round(os.getloadavg()[0], 2)
            try:
                if engine == "hf":
                    times, out, extra = bench_hf(args.arch, model_dir, ids, new_tokens,
                                                 args.threads, args.reps)
                elif engine in ("ct2-f32", "ct2-int8"):
                    if args.arch != "t5":
                        row.update(status="skipped", reason="ctranslate2 baseline is T5 only here")
                        emit(row)
                        continue
                    try:
                        import ctranslate2  # noqa: F401
                    except ImportError as e:
                        row.update(status="skipped", reason=f"ctranslate2 not importable: {e}")
                        emit(row)
                        continue
                    ct = "float32" if engine == "ct2-f32" else "int8"
                    times, out, extra = bench_ct2(model_dir, ct2_dir, ids, new_tokens,
                                                  args.threads, args.reps, ct, vocab)
                elif engine == "jobx":
                    times, out, extra = bench_jobx(args.jobx, model_dir, ids, new_tokens,
                                                   args.threads, args.reps, args.jobx_arg)
                else:
                    row.update(status="skipped", reason=f"unknown engine {engine}")
                    emit(row)
                    continue
            except Exception as e:  # keep going: one broken engine must not lose the others
                row.update(status="error", reason=f"{type(e).__name__}: {e}"[:2000])
                emit(row)
                continue
            med = statistics.median(times)
            total_new = batch * new_tokens
            row.update(status="ok", seconds=round(med, 4), runs=[round(t, 4) for t in times],
                       new_tokens=total_new, tokens_per_s=round(total_new / med, 2),
                       # On a shared machine the fastest run is the least disturbed one.
                       min_seconds=round(min(times), 4),
                       tokens_per_s_best=round(total_new / min(times), 2),
                       includes_load=engine == "jobx",
                       cpu_seconds=round(statistics.median(CPU_TIMES), 4),
                       loadavg_1min_before_after=[load_before, round(os.getloadavg()[0], 2)],
                       **extra)
            if out is not None:
                lens = sorted({len(r) for r in out})
                row["generated_lens"] = lens
                outputs[engine] = out
                if engine != "hf" and "hf" in outputs:
                    row["agree_with_hf_prefix"] = agree_prefix(outputs["hf"], out)
                if engine == "hf":  # engines timed before HF (jobx) get their agreement now
                    for r in results:
                        if r.get("batch") == batch and r.get("engine") in outputs and r["engine"] != "hf":
                            r["agree_with_hf_prefix"] = agree_prefix(out, outputs[r["engine"]])
            emit(row)

    ok = {(r["engine"], r["batch"]): r for r in results if r.get("status") == "ok"}
    for r in results:
        base = ok.get(("hf", r["batch"]))
        if r.get("status") == "ok" and base and r["engine"] != "hf":
            r["speedup_vs_hf"] = round(base["seconds"] / r["seconds"], 3)
            r["speedup_vs_hf_best"] = round(base["min_seconds"] / r["min_seconds"], 3)
    summary = dict(
        kind="jobx-cpu-baselines",
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        git_commit=git_commit(),
        host=dict(cpu=cpu_name(), logical_cpus=os.cpu_count(), python=platform.python_version()),
        versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                      ctranslate2=_ct2_version()),
        arch=args.arch, model_dir=model_dir, threads=args.threads, reps=args.reps,
        timing="one warm-up run, then median of reps (wall seconds; min_seconds = fastest run; "
               "cpu_seconds = median process CPU time, all threads); HF/CT2 in-process with the model already loaded; jobx as "
               "a subprocess including model load",
        src_len=src_len, new_tokens_per_seq=new_tokens, eos="suppressed (min length = max length)",
        note=args.note,
        results=results,
    )
    print(json.dumps(summary), flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")


def _ct2_version():
    try:
        import ctranslate2
        return ctranslate2.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
