#!/usr/bin/env python3
"""End-to-end greedy generation on a GPU: jobx-engine (CUDA T5 graph) vs HF transformers bf16, same
card, same random FLAN-T5-Large-shaped checkpoint (d_model 1024, 24+24 layers, 16 heads x 64,
d_ff 2816, vocab 32128, gated-gelu, untied head; bf16 safetensors written here with torch), source
1024 tokens, 256 new tokens with EOS suppressed (min_new_tokens), batch 1, 8 and 32; then beam
search (4 beams, early stopping, as the reference project decodes) at batch 8, 128 new tokens.
Timing: HF in-process, after a short warm-up generation (8 new tokens: every kernel of a step
loaded, cuBLAS initialised), the faster of 2 timed runs (HF at its best: HF's own time varied
6.8-10.9 s at batch 32 across earlier runs on the same kind of card, so one run cannot settle a
10x claim; both times are printed); jobx as a subprocess, its own `generate_ms` (model load
excluded, reported separately as `load_ms`). One JSON line per (engine, batch).

Runs go in priority order (`plan`): first what the issue's targets read (per batch: HF, jobx
with plain steps, jobx with CUDA graphs, the default), then the diagnostics (opt-in kernels,
PDL alone, the kernel profile, int8 K/V, int8 weights), beam search last. With --budget S the
script starts no run that its estimate (from the runs before it) says would end after S
seconds: it prints a `skipped` line for it instead, so gpu-check.sh's time limit (the issue:
under 8 minutes in all) costs the least telling runs rather than cutting whatever was running.

  python tools/gpu_bench_e2e.py --jobx gpu-bundle/jobx-engine --workdir /tmp/t5l [--batches 1,8,32]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# programmatic dependent launch off (on by default since the H100 run of 2026-11-28): its
# same-run baseline at the largest batch, where gpu-check's pdl family passed ("JOBX_PDL" in
# the opt-in set, a marker there: it changes nothing of the default)
NO_PDL = {"JOBX_PDL": "0"}
# weight-only int8 products of >= 256 rows on the mma.sync tiles, as before the widening for
# the wgmma tiles (the same-run baseline of the int8-weights run)
NO_WIDEN = {"JOBX_GEMM_DEQUANT": "0"}


def make_model(d):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration
    if os.path.exists(os.path.join(d, "config.json")):
        return
    cfg = T5Config(vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_layers=24,
                   num_decoder_layers=24, num_heads=16, relative_attention_num_buckets=32,
                   relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                   tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=1)
    cfg.tie_word_embeddings = False
    torch.manual_seed(0)
    t0 = time.perf_counter()
    # initialised on the GPU where it can be (780 M parameters drawn on the host took a share of
    # the check's time budget), else on the host as before; the weights' values do not matter
    # to the timings (EOS is suppressed)
    try:
        with torch.device("cuda"):
            m = T5ForConditionalGeneration(cfg)
    except Exception as e:  # an older torch without device contexts: the host
        print(f"gpu_bench_e2e: model initialised on the host ({e})", file=sys.stderr)
        m = T5ForConditionalGeneration(cfg)
    # an LM head of its own, as FLAN-T5 has. transformers 5.x may still tie it to `shared` in
    # memory and then leave lm_head.weight out of save_pretrained's file (seen on the H100,
    # 2026-11-26), so the config and the tensors are written here directly.
    # (std 1, as transformers' T5 init draws an untied head: peaked next-token distributions,
    # so the greedy ids of two bf16 engines can be compared)
    m.lm_head.weight = torch.nn.Parameter(torch.randn_like(m.shared.weight))
    m = m.to(torch.bfloat16)
    os.makedirs(d, exist_ok=True)
    from safetensors.torch import save_file
    sd = {k: v.detach().contiguous().cpu().clone() for k, v in m.state_dict().items()
          if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")}
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    m.config.save_pretrained(d)  # last: its config.json marks the folder complete
    print(f"gpu_bench_e2e: checkpoint written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def run_jobx(cmd, eng, b, env, timeout):
    """One jobx-engine run: (its last JSON line, stderr), or None after printing an error line."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, **env))
    except subprocess.TimeoutExpired:
        print(json.dumps(dict(engine=eng, batch=b, error=f"timed out after {timeout:.0f} s")),
              flush=True)
        return None
    if p.returncode != 0:
        print(json.dumps(dict(engine=eng, batch=b, error=p.stderr[-800:])), flush=True)
        return None
    try:
        return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr
    except (IndexError, ValueError):
        print(json.dumps(dict(engine=eng, batch=b, error="no JSON line on stdout: "
                              + (p.stdout[-400:] + p.stderr[-400:]))), flush=True)
        return None


def prefix_match(out, hf_rows):
    """Agreement with HF (HF's rows, lists of ids, start with the decoder start token): mean
    length of the common prefix, a sanity check only (random weights give near-flat logits, so
    rounding differences, int8 ones especially, may flip an argmax early). None without HF's."""
    if hf_rows is None:
        return None
    ours = out["ids"] if isinstance(out["ids"][0], list) else [out["ids"]]
    pref = []
    for o, t in zip(ours, [r[1:] for r in hf_rows]):
        n = 0
        while n < min(len(o), len(t)) and o[n] == t[n]:
            n += 1
        pref.append(n)
    return sum(pref) / max(len(pref), 1)


def hf_time(hf, ids, kw, runs=2):
    """HF generate on `ids`: a warm-up of 8 new tokens, then `runs` timed full runs; (the
    fastest time, all times, the last run's ids as lists)."""
    import torch
    ts = []
    with torch.no_grad():
        x = ids.cuda()
        hf.generate(x, **dict(kw, max_new_tokens=8, min_new_tokens=8))
        for _ in range(runs):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = hf.generate(x, **kw)
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
    return min(ts), ts, out.tolist()


def host_facts():
    """The host CPU and its load: HF's greedy decode is bound by Python launching kernels (its
    time ran 6.8-10.9 s at batch 32 on the same kind of card), so a slow or busy host shows
    here rather than on the GPU."""
    import torch
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return dict(cpu=model, cpus=os.cpu_count(), loadavg=load, torch_threads=torch.get_num_threads())


def profile_lines(stderr):
    return [l for l in stderr.splitlines() if l.startswith("jobx profile")]


def engine_name(wfmt, prof, kv, graphs, extra):
    return ("jobx-cuda-" + wfmt
            + ("-cross-kv-int8" if kv == "int8" else "")
            + ("-graphs" if graphs == "1" else "")
            + ("-no-pdl" if extra == NO_PDL else "-no-widen" if extra == NO_WIDEN
               else "-optin" if extra else "")
            + ("-kernel-profile" if prof == "kernels" else ""))


def plan(batches, optin, beam):
    """The runs in priority order, as (kind, batch, spec): kind "hf" (HF greedy), "jobx" (spec
    = (weights, JOBX_PROFILE, cross-kv, JOBX_CUDA_GRAPHS, extra env)), "hf-beam", "beam" (spec
    = JOBX_CUDA_GRAPHS). Plain steps unless the run is named -graphs (graphs are the engine's
    default since run 5, so JOBX_CUDA_GRAPHS is always set explicitly). The decode GEMMs are
    tuned on the card in every run; the choices show as "jobx profile: gemm tune" lines.
    (The fixed-rule run, JOBX_GEMM_TUNE=off, measured the tuning in run 5: 1.527 vs 1.124 s at
    batch 32; dropped for time.)"""
    top = max(batches)
    steps = []
    # 1. what the targets read: HF, then jobx plain (the ids the graph and opt-in runs are
    # compared with) and with graphs (the default configuration), every batch
    for b in batches:
        steps += [("hf", b, None), ("jobx", b, ("bf16", "1", "bf16", "0", {})),
                  ("jobx", b, ("bf16", "1", "bf16", "1", {}))]
    # 2. the opt-in families that passed on this card, together (what the decision rule reads;
    # JOBX_PDL alone is no family to time: PDL is the default)
    if any(k != "JOBX_PDL" for k in optin):
        steps += [("jobx", b, ("bf16", "1", "bf16", "1", optin)) for b in batches]
    # programmatic dependent launch off at the largest batch, where its family passed: the
    # baseline of the default's PDL (its effect is spread over every launch)
    if "JOBX_PDL" in optin:
        steps.append(("jobx", top, ("bf16", "1", "bf16", "1", NO_PDL)))
    # 3. the kernel profile at the largest batch (events around every launch: device time per
    # kernel for load + encoder and the decode steps; its own seconds include the events' cost)
    steps.append(("jobx", top, ("bf16", "kernels", "bf16", "0", {})))
    # 4. the user's int8 choices: int8 cross-attention K/V, weight-only int8
    steps += [("jobx", b, ("bf16", "1", "int8", "0", {})) for b in batches]
    steps += [("jobx", b, ("int8", "1", "bf16", "0", {})) for b in batches]
    # and at the largest batch without the widening of int8 weights (the encoder's products)
    steps.append(("jobx", top, ("int8", "1", "bf16", "0", NO_WIDEN)))
    # 5. beam search: HF, then jobx with plain steps and with graphs (T5 beam search keeps two
    # cache sets, one recording each)
    if beam:
        bb = beam[0]
        steps += [("hf-beam", bb, None), ("beam", bb, "0"), ("beam", bb, "1")]
    return steps


class Budget:
    """Seconds left of --budget (None: no limit), and whether a run expected to take `est`
    seconds still fits."""

    def __init__(self, seconds, clock=time.monotonic):
        self.clock = clock
        self.end = None if seconds is None else clock() + seconds

    def left(self):
        return float("inf") if self.end is None else self.end - self.clock()

    def fits(self, est):
        return est <= self.left()


def execute(steps, ctx, budget, emit=lambda row: print(json.dumps(row), flush=True)):
    """Run `steps` (from `plan`) in order. `ctx` gives the data and the engines:
    ctx.new, ctx.timeout, ctx.beam (batch, beams, new); ctx.hf(batch, beam) -> (fastest s,
    [s...], HF's ids as lists); ctx.jobx(eng, batch, beam, weights, cross_kv, env, timeout) ->
    (jobx's JSON line, its stderr) or None (it has printed the error line); ctx.host() -> host
    facts. A run whose estimate does not fit the budget is skipped with a line saying so.
    Estimates: a jobx run the longest wall time of a successful jobx run so far (x2 for the
    kernel profile) x 1.25 + 3 s, 15 s before any (run 5: 5-9 s a run; a run that failed or
    timed out says nothing of the others); HF 2.6 x its slowest timed run so far + 10 s (a
    warm-up and two runs, maybe a larger batch), 35 s before any (run 5: 9-12 s a timed run).
    An HF run starts only if the two jobx runs it is compared with fit after it; one that raises
    (out of memory, an API change) gives an error line, and the jobx runs go on without it."""
    hf = {}          # batch -> (fastest seconds, ids as lists); "beam" for the beam run
    plain = {}       # batch (or "beam") -> ids of the plain-steps run
    walls = []       # wall seconds of the successful jobx runs
    hf_runs = []     # seconds of every timed HF run
    skipped = 0

    def est_jobx(spec_prof):
        e = (max(walls) * 1.25 + 3) if walls else 15.0
        return e * 2 if spec_prof == "kernels" else e

    def est_hf():
        return 2.6 * max(hf_runs) + 10 if hf_runs else 35.0

    def skip(eng, b, est, **extra):
        nonlocal skipped
        skipped += 1
        emit(dict(engine=eng, batch=b, **extra,
                  skipped=f"the check's time budget: {max(budget.left(), 0):.0f} s left, "
                          f"this run takes ~{est:.0f} s"))

    for kind, b, spec in steps:
        if kind in ("hf", "hf-beam"):
            eng = "hf-bf16" + ("-beam" if kind == "hf-beam" else "")
            beam_kw = dict(beams=ctx.beam[1], new=ctx.beam[2]) if kind == "hf-beam" else {}
            # (the beam run, 128 new tokens, takes about half a greedy one)
            est = est_hf() * (0.6 if kind == "hf-beam" else 1.0)
            if not budget.fits(est + 2 * est_jobx("1")):
                skip(eng, b, est, **beam_kw)
                continue
            try:
                hs, ts, rows = ctx.hf(b, kind == "hf-beam")
            except Exception as e:  # noqa: BLE001 (the comparison is lost, not the jobx runs)
                emit(dict(engine=eng, batch=b, **beam_kw, error=f"{type(e).__name__}: {e}"[-800:]))
                continue
            hf_runs.extend(ts)
            hf["beam" if kind == "hf-beam" else b] = (hs, rows)
            row = dict(engine=eng, batch=b, **beam_kw, seconds=round(hs, 3),
                       seconds_runs=[round(t, 3) for t in ts])
            if kind == "hf":
                row["tokens_per_s"] = round(b * ctx.new / hs, 1)
                row["host"] = ctx.host()
            emit(row)
            continue
        if kind == "beam":
            graphs, key = spec, "beam"
            wfmt, prof, kv, extra = "bf16", "1", "bf16", {}
            eng = "jobx-cuda-bf16-beam" + ("-graphs" if graphs == "1" else "")
        else:
            wfmt, prof, kv, graphs, extra = spec
            key = b
            eng = engine_name(wfmt, prof, kv, graphs, extra)
        beam_kw = dict(beams=ctx.beam[1], new=ctx.beam[2]) if kind == "beam" else {}
        est = est_jobx(prof)
        if not budget.fits(est):
            skip(eng, b, est, **beam_kw)
            continue
        env = dict(JOBX_PROFILE=prof, JOBX_GEMM_TUNE="on", JOBX_CUDA_GRAPHS=graphs, **extra)
        t0 = budget.clock()
        r = ctx.jobx(eng, b, kind == "beam", wfmt, kv, env, max(1.0, min(ctx.timeout, budget.left())))
        if r is None:
            continue
        walls.append(budget.clock() - t0)
        out, err = r
        js = out["generate_ms"] / 1e3
        hs, hf_rows = hf.get(key, (None, None))
        row = dict(engine=eng, batch=b, **beam_kw, seconds=round(js, 3), load_ms=out["load_ms"])
        if kind != "beam":
            row["tokens_per_s"] = round(b * ctx.new / js, 1)
        row["speedup_vs_hf"] = round(hs / js, 2) if hs and prof == "1" else None
        if kind != "beam":
            row["new_tokens"] = out["new_tokens"]
        row["hf_prefix_match_mean"] = prefix_match(out, hf_rows)
        row["profile"] = profile_lines(err)
        if graphs == "0" and prof == "1" and kv == "bf16" and wfmt == "bf16" and not extra:
            plain[key] = out["ids"]
        if graphs == "1":
            # replay vs plain steps: the same ids unless a near-tie flips (the decode
            # attention's key split follows the cache length); a failed recording says so
            row["same_ids_as_plain"] = out["ids"] == plain.get(key) if key in plain else None
            row["graph_notes"] = [l for l in err.splitlines() if "CUDA graph" in l]
        if extra and extra != NO_WIDEN:
            row["optin"] = extra
        emit(row)
    if skipped:
        print(f"gpu_bench_e2e: {skipped} run(s) skipped for the time budget", file=sys.stderr)
    return skipped


class Engines:
    """The real engines behind `execute`: HF in this process, jobx-engine as a subprocess."""

    def __init__(self, a, hf, ids, beam_ids):
        self.a, self.hf_model, self.new, self.timeout = a, hf, a.new, a.timeout
        self.beam = beam_ids[0] if beam_ids else None
        self.ids, self.beam_ids = ids, beam_ids
        self.files = {}
        for key, t in list(ids.items()) + ([("beam", beam_ids[1])] if beam_ids else []):
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump(t.tolist(), f)
            self.files[key] = f.name

    def hf(self, b, beam):
        if beam:
            _, beams, new = self.beam
            kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, num_beams=beams,
                      early_stopping=True)
            return hf_time(self.hf_model, self.beam_ids[1], kw)
        kw = dict(max_new_tokens=self.new, min_new_tokens=self.new, do_sample=False, num_beams=1)
        return hf_time(self.hf_model, self.ids[b], kw)

    def host(self):
        return host_facts()

    def jobx(self, eng, b, beam, weights, kv, env, timeout):
        if beam:
            _, beams, new = self.beam
            f = self.files["beam"]
        else:
            beams, new, f = 1, self.new, self.files[b]
        cmd = [self.a.jobx, "--device", "cuda", "--gpu-weights", weights, "--cross-kv", kv,
               "generate", "--model", self.a.workdir, "--input-ids", f,
               "--max-new-tokens", str(new), "--min-new-tokens", str(new), "--num-beams", str(beams)]
        return run_jobx(cmd, eng, b, env, timeout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobx", required=True)
    ap.add_argument("--workdir", default="/tmp/jobx-t5-large")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--src-len", type=int, default=1024)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--timeout", type=int, default=90, help="seconds for one jobx-engine run")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole script: runs that would end later are skipped "
                         "(gpu-check.sh passes what its own limit leaves)")
    ap.add_argument("--beam", default="8,4,128",
                    help="batch,beams,new tokens of the beam-search run after the greedy ones "
                         "(the reference project decodes with 4 beams); empty to skip")
    ap.add_argument("--optin", default="",
                    help="KEY=V,... : one more graphs run with these opt-in kernels on (gpu-check.sh "
                         "passes the families whose op cases passed on this card), named -optin")
    a = ap.parse_args()
    budget = Budget(a.budget)
    optin = dict(kv.split("=", 1) for kv in a.optin.split(",") if "=" in kv)
    batches = [int(x) for x in a.batches.split(",")]
    beam = tuple(int(x) for x in a.beam.split(",")) if a.beam else None
    import torch
    os.makedirs(a.workdir, exist_ok=True)
    make_model(a.workdir)
    from transformers import T5ForConditionalGeneration
    try:  # transformers 5.x names it `dtype`; 4.x `torch_dtype`
        hf = T5ForConditionalGeneration.from_pretrained(a.workdir, dtype=torch.bfloat16)
    except TypeError:
        hf = T5ForConditionalGeneration.from_pretrained(a.workdir, torch_dtype=torch.bfloat16)
    hf = hf.cuda().eval()
    print(f"gpu_bench_e2e: ready for the runs after {a.budget - budget.left() if a.budget else 0:.1f} s"
          " of the budget", file=sys.stderr)
    # the same draws, in the same order, as the runs before the priority plan: every greedy
    # batch's source, then the beam run's
    g = torch.Generator().manual_seed(1)

    def make_ids(b):
        ids = torch.randint(5, 32000, (b, a.src_len), generator=g)
        ids[:, -1] = 1
        return ids
    ids = {b: make_ids(b) for b in batches}
    beam_ids = (beam, make_ids(beam[0])) if beam else None
    execute(plan(batches, optin, beam), Engines(a, hf, ids, beam_ids), budget)


if __name__ == "__main__":
    main()
