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

  python tools/gpu_bench_e2e.py --jobx gpu-bundle/jobx-engine --workdir /tmp/t5l [--batches 1,8,32]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch


def make_model(d):
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
    sd = {k: v.detach().contiguous().clone() for k, v in m.state_dict().items()
          if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")}
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    m.config.save_pretrained(d)  # last: its config.json marks the folder complete


def run_jobx(a, cmd, eng, b, env):
    """One jobx-engine run: its last JSON line and stderr, or None after printing an error line."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout,
                           env=dict(os.environ, **env))
    except subprocess.TimeoutExpired:
        print(json.dumps(dict(engine=eng, batch=b, error=f"timed out after {a.timeout} s")),
              flush=True)
        return None
    if p.returncode != 0:
        print(json.dumps(dict(engine=eng, batch=b, error=p.stderr[-800:])), flush=True)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def prefix_match(out, hf_out):
    """Agreement with HF (HF's rows start with the decoder start token): mean length of the
    common prefix, a sanity check only (random weights give near-flat logits, so rounding
    differences, int8 ones especially, may flip an argmax early)."""
    ours = out["ids"] if isinstance(out["ids"][0], list) else [out["ids"]]
    pref = []
    for o, t in zip(ours, hf_out[:, 1:].tolist()):
        n = 0
        while n < min(len(o), len(t)) and o[n] == t[n]:
            n += 1
        pref.append(n)
    return sum(pref) / max(len(pref), 1)


def hf_time(hf, ids, kw, runs=2):
    """HF generate on `ids`: a warm-up of 8 new tokens, then `runs` timed full runs; (the
    fastest time, all times, the last run's ids)."""
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
    return min(ts), ts, out


def host_facts():
    """The host CPU and its load: HF's greedy decode is bound by Python launching kernels (its
    time ran 6.8-10.9 s at batch 32 on the same kind of card), so a slow or busy host shows
    here rather than on the GPU."""
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobx", required=True)
    ap.add_argument("--workdir", default="/tmp/jobx-t5-large")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--src-len", type=int, default=1024)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--timeout", type=int, default=90, help="seconds for one jobx-engine run")
    ap.add_argument("--beam", default="8,4,128",
                    help="batch,beams,new tokens of the beam-search run after the greedy ones "
                         "(the reference project decodes with 4 beams); empty to skip")
    ap.add_argument("--optin", default="",
                    help="KEY=V,... : one more graphs run with these opt-in kernels on (gpu-check.sh "
                         "passes the families whose op cases passed on this card), named -optin")
    a = ap.parse_args()
    optin = dict(kv.split("=", 1) for kv in a.optin.split(",") if "=" in kv)
    os.makedirs(a.workdir, exist_ok=True)
    make_model(a.workdir)
    from transformers import T5ForConditionalGeneration
    try:  # transformers 5.x names it `dtype`; 4.x `torch_dtype`
        hf = T5ForConditionalGeneration.from_pretrained(a.workdir, dtype=torch.bfloat16)
    except TypeError:
        hf = T5ForConditionalGeneration.from_pretrained(a.workdir, torch_dtype=torch.bfloat16)
    hf = hf.cuda().eval()
    g = torch.Generator().manual_seed(1)
    for b in [int(x) for x in a.batches.split(",")]:
        ids = torch.randint(5, 32000, (b, a.src_len), generator=g)
        ids[:, -1] = 1
        # HF
        kw = dict(max_new_tokens=a.new, min_new_tokens=a.new, do_sample=False, num_beams=1)
        hs, ts, hf_out = hf_time(hf, ids, kw)
        print(json.dumps(dict(engine="hf-bf16", batch=b, seconds=round(hs, 3),
                              seconds_runs=[round(t, 3) for t in ts],
                              tokens_per_s=round(b * a.new / hs, 1), host=host_facts())),
              flush=True)
        # jobx
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(ids.tolist(), f)
        # Runs (plain steps unless named -graphs: JOBX_CUDA_GRAPHS is set explicitly, graphs
        # being the engine's default since run 5): bf16 weights; bf16 with CUDA graphs (the
        # decode step recorded once and replayed), its ids compared with the plain run's; bf16
        # weights with int8 cross-attention K/V (--cross-kv int8, opt-in); weight-only int8;
        # and at the largest batch bf16 with JOBX_PROFILE=kernels (timing events around every
        # launch: device time per kernel for the load + encoder and the decode steps; its own
        # seconds include the events' cost). The decode GEMMs are tuned on the card in every
        # run; the choices show as "jobx profile: gemm tune" lines.
        # Most telling first, so a run cut short by the step's timeout loses the least.
        # (The fixed-rule run, JOBX_GEMM_TUNE=off, measured the tuning in run 5: 1.527 vs 1.124 s
        # at batch 32; dropped for time.)
        # (An -optin run, with --optin's kernels on, follows the graphs run: its ids are
        # compared with the plain run's too.)
        runs = [("bf16", "1", "on", "bf16", "0", {}), ("bf16", "1", "on", "bf16", "1", {})]
        pdl_only = {"JOBX_PDL": "1"}
        if optin:
            runs.append(("bf16", "1", "on", "bf16", "1", optin))
        runs += [("bf16", "1", "on", "int8", "0", {}), ("int8", "1", "on", "bf16", "0", {})]
        # programmatic dependent launch alone at the largest batch (its effect is spread over
        # every launch, so the -optin run cannot show its share), named -pdl
        if "JOBX_PDL" in optin and optin != pdl_only and b == max(int(x) for x in a.batches.split(",")):
            runs.append(("bf16", "1", "on", "bf16", "1", pdl_only))
        if b == max(int(x) for x in a.batches.split(",")):  # the profile at the largest batch
            runs.append(("bf16", "kernels", "on", "bf16", "0", {}))
        plain_ids = None
        for wfmt, prof, tune, kv, graphs, extra in runs:
            cmd = [a.jobx, "--device", "cuda", "--gpu-weights", wfmt, "--cross-kv", kv, "generate",
                   "--model", a.workdir, "--input-ids", f.name, "--max-new-tokens", str(a.new),
                   "--min-new-tokens", str(a.new), "--num-beams", "1"]
            eng = ("jobx-cuda-" + wfmt + ("-fixed-rule" if tune == "off" else "")
                   + ("-cross-kv-int8" if kv == "int8" else "")
                   + ("-graphs" if graphs == "1" else "")
                   + ("-pdl" if extra == pdl_only else "-optin" if extra else "")
                   + ("-kernel-profile" if prof == "kernels" else ""))
            # JOBX_PROFILE=1: the stepper reports host enqueue vs GPU wait per decode step
            r = run_jobx(a, cmd, eng, b, dict(JOBX_PROFILE=prof, JOBX_GEMM_TUNE=tune,
                                              JOBX_CUDA_GRAPHS=graphs, **extra))
            if r is None:
                continue
            out, err = r
            js = out["generate_ms"] / 1e3
            row = dict(engine=eng, batch=b, seconds=round(js, 3), load_ms=out["load_ms"],
                       tokens_per_s=round(b * a.new / js, 1),
                       speedup_vs_hf=round(hs / js, 2) if prof == "1" else None,
                       new_tokens=out["new_tokens"],
                       hf_prefix_match_mean=prefix_match(out, hf_out),
                       profile=profile_lines(err))
            if eng == "jobx-cuda-bf16":
                plain_ids = out["ids"]
            if graphs == "1":
                # replay vs plain steps: the same ids unless a near-tie flips (the decode
                # attention's key split follows the cache length); a failed recording says so
                row["same_ids_as_plain"] = out["ids"] == plain_ids
                row["graph_notes"] = [l for l in err.splitlines() if "CUDA graph" in l]
            if extra:
                row["optin"] = extra
            print(json.dumps(row), flush=True)
    if a.beam:
        def make_ids(b):
            ids = torch.randint(5, 32000, (b, a.src_len), generator=g)
            ids[:, -1] = 1
            return ids
        beam_run(a, hf, make_ids)


def beam_run(a, hf, make_ids):
    """Beam search (the reference project's num_beams=4, early stopping), EOS suppressed for a
    fixed length: HF as the greedy runs (`hf_time`); jobx once with plain steps, once with
    CUDA graphs."""
    b, beams, new = (int(x) for x in a.beam.split(","))
    ids = make_ids(b)
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, num_beams=beams,
              early_stopping=True)
    hs, ts, hf_out = hf_time(hf, ids, kw)
    print(json.dumps(dict(engine="hf-bf16-beam", batch=b, beams=beams, new=new,
                          seconds=round(hs, 3), seconds_runs=[round(t, 3) for t in ts])),
          flush=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(ids.tolist(), f)
    cmd = [a.jobx, "--device", "cuda", "generate", "--model", a.workdir, "--input-ids", f.name,
           "--max-new-tokens", str(new), "--min-new-tokens", str(new), "--num-beams", str(beams)]
    # plain steps, then CUDA graphs (T5 beam search keeps two cache sets, one recording each)
    plain_ids = None
    for graphs in ("0", "1"):
        eng = "jobx-cuda-bf16-beam" + ("-graphs" if graphs == "1" else "")
        r = run_jobx(a, cmd, eng, b, dict(JOBX_PROFILE="1", JOBX_CUDA_GRAPHS=graphs))
        if r is None:
            continue
        out, err = r
        js = out["generate_ms"] / 1e3
        row = dict(engine=eng, batch=b, beams=beams, new=new, seconds=round(js, 3),
                   load_ms=out["load_ms"], speedup_vs_hf=round(hs / js, 2),
                   hf_prefix_match_mean=prefix_match(out, hf_out),
                   profile=profile_lines(err))
        if graphs == "0":
            plain_ids = out["ids"]
        else:
            row["same_ids_as_plain"] = out["ids"] == plain_ids
            row["graph_notes"] = [l for l in err.splitlines() if "CUDA graph" in l]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
