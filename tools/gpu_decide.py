#!/usr/bin/env python3
"""Read a tools/gpu-check.sh output folder and print, per opt-in family and per issue target, what
it measured and what the decision rule of docs/PERFORMANCE.md ("What the next GPU run is prepared
to read") says: a family whose op cases passed and whose rows beat the default at every
benchmarked shape becomes the default; a failing one is debugged from its FAIL lines. Adds the
verdicts to OUT_DIR/summary.json ("decisions"). Only reads what gpu-check wrote: runs anywhere
with plain Python 3 (tested on the development machine against earlier runs' folders).

  python3 tools/gpu_decide.py OUT_DIR
"""
import json
import os
import re
import sys

FAMILIES = ["dequant", "fa2", "wg", "ws", "rms", "online", "persistent", "splitk", "q8decode", "pdl"]
# the families made the default on the H100 runs of 2026-11-28 (runtime.rs, Gpu::new): their
# verdicts say whether to keep them so or to turn them off by default again
DEFAULT_ON = {"fa2", "wg", "splitk", "pdl"}
ATTN_KEYS = ("batch", "heads", "tq", "t", "dk")


def load_jsonl(out, name):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        return []
    rows = []
    for line in open(p):
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows


def family_status(out):
    """{family: exit code} from the "opt-in KEY: exit N" lines of op-tests.log."""
    st = {}
    p = os.path.join(out, "op-tests.log")
    if os.path.exists(p):
        for line in open(p, errors="replace"):
            m = re.match(r"opt-in (\w+): exit (\d+)", line)
            if m:
                st[m.group(1)] = int(m.group(2))
    return st


def fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def main():
    out = sys.argv[1]
    kern, torch, e2e = (load_jsonl(out, n) for n in ("kernels.jsonl", "torch.jsonl", "e2e.jsonl"))
    status = family_status(out)
    ms = lambda rows, op, **kw: next((r["ms"] for r in rows if r.get("op") == op and "ms" in r
                                      and all(r.get(k) == v for k, v in kw.items())), None)
    decisions = {}

    def verdict(fam, measured, wins, note="", win="faster everywhere timed", lose="not faster everywhere",
                then=None, otherwise=None):
        # (what to do by default: a family already the default is kept or turned off again, an
        # opt-in one made the default or left opt-in)
        if then is None:
            then = ": keep it the default" if fam in DEFAULT_ON else ": make it the default"
        if otherwise is None:
            otherwise = (": turn it off by default again (runtime.rs, Gpu::new)" if fam in DEFAULT_ON
                         else ": stays opt-in")
        if fam not in status:
            v = "not run"
        elif status[fam] != 0:
            v = f"op cases failed (exit {status[fam]}): debug from the FAIL lines in op-tests.log"
            if fam in DEFAULT_ON:
                v += "; until fixed, turn it off by default (runtime.rs, Gpu::new)"
        elif not measured:
            v = "passed, not timed"
        elif wins:
            v = f"passed and {win}{then}"
        else:
            v = f"passed, {lose}{otherwise}"
        decisions[fam] = dict(verdict=v, note=note)
        print(f"  => {fam}: {v}{'  (' + note + ')' if note else ''}")

    # prefill attention: the flash variants against the kernel they would replace and SDPA:
    # the mma.sync kernel (`attention_mma` rows, since fa2 and wg are the default), else the
    # default (earlier runs' folders, before that row)
    print("attention (prefill shapes): ms, and SDPA time / ours (target >= 0.7)")
    shapes = sorted({tuple(r[k] for k in ATTN_KEYS) for r in kern
                     if r.get("op") == "attention" and r.get("tq", 0) > 4})
    # (ws, the warp-specialised kernels, opt-in, written 2026-11-28 without a device, would
    # replace the default at both head dims, wg at 128 and fa2 at 64: against the `attention`
    # rows)
    for fam in ("fa2", "wg", "ws"):
        wins, measured = True, False
        for s in shapes:
            kw = dict(zip(ATTN_KEYS, s))
            d, f, t = ms(kern, "attention", **kw), ms(kern, f"attention_{fam}", **kw), ms(torch, "torch_sdpa", **kw)
            mma = ms(kern, "attention_mma", **kw) if fam != "ws" else None
            base = mma if mma is not None else d
            if f is None:
                # (a bench cut short between the default's row and the family's: not a win)
                wins = False
                print(f"  {fam:<4} {str(list(s)):<26} default {fmt(d)}  {fam} not timed")
                continue
            measured = True
            wins &= base is not None and f < base
            print(f"  {fam:<4} {str(list(s)):<26} {'mma' if mma is not None else 'default'} {fmt(base)}  {fam} {fmt(f)}  "
                  f"sdpa {fmt(t)}  sdpa/{fam} {fmt(t / f if t else None, '.2f')}  "
                  f"sdpa/default {fmt(t / d if t and d else None, '.2f')}")
        verdict(fam, measured, wins, "replaces wg and fa2 at both head dims (JOBX_FLASH_WS=1)" if fam == "ws" else "")
    # decode attention (one query a row): the one-pass kernels (Gpu::decode_online, opt-in,
    # written 2026-11-28 without a device) against the default two-pass ones, both at the
    # rule's key-chunk count (the `attention` and `attention_online` rows), with the forced
    # counts' K/V GB/s for the record
    print("attention (decode shapes): ms, default two-pass -> one-pass, and K/V GB/s per forced chunk count")
    dshapes = sorted({tuple(r[k] for k in ATTN_KEYS) for r in kern
                      if r.get("op") == "attention" and r.get("tq") == 1})
    wins, measured = True, False
    for s_ in dshapes:
        kw = dict(zip(ATTN_KEYS, s_))
        d, o, t = ms(kern, "attention", **kw), ms(kern, "attention_online", **kw), ms(torch, "torch_sdpa", **kw)
        measured |= o is not None
        wins &= d is not None and o is not None and o < d
        gbs = lambda pre: " ".join(f"{n}:{r.get('kv_gb_s')}" for n in (1, 2, 4, 8) for r in kern
                                   if r.get("op") == f"{pre}{n}" and all(r.get(k) == v for k, v in kw.items()))
        print(f"  {str(list(s_)):<26} default {fmt(d, '.4f')}  online {fmt(o, '.4f')}  sdpa {fmt(t, '.4f')}  "
              f"GB/s two-pass [{gbs('attention_splits')}] one-pass [{gbs('attention_online_splits')}]")
    verdict("online", measured, wins, "one-pass decode attention in place of the two-pass kernel (JOBX_DECODE_ONLINE=1)",
            win="faster at every decode shape timed")
    for r in kern:
        if r.get("op") == "attention_trace":
            ph = {k: r[k] for k in r if k.endswith("_cyc")}
            print(f"  trace {r.get('kernel')} {[r.get(k) for k in ATTN_KEYS]}: {r.get('cyc_per_step')} cycles a key step; {ph}")

    # persistent GEMMs against the default TMA kernels, both dtypes
    print("persistent GEMMs (m > 32): ms default -> _p")
    wins, measured = True, False
    for r in kern:
        op = r.get("op", "")
        if op in ("gemm_bf16", "gemm_w8a8") and r.get("m", 0) > 32 and "ms" in r:
            p_ms = ms(kern, op + "_tma_n256_p", m=r["m"], n=r["n"], k=r["k"])
            measured |= p_ms is not None
            # (a shape without its _p row, a bench cut short: not a win)
            wins &= p_ms is not None and p_ms < r["ms"]
            print(f"  {op:<12} {str([r['m'], r['n'], r['k']]):<22} {r['ms']:.4f} -> {fmt(p_ms, '.4f')}")
    verdict("persistent", measured, wins)

    # split-k: a tuning candidate (kept per shape only where it wins), so it needs only to pass
    # and win somewhere
    print("skinny_tc split over k (m <= 32): ms skinny_tc -> skinny_tc_split")
    any_win, measured = False, False
    for r in kern:
        op = r.get("op", "")
        if op.endswith("_skinny_tc_split"):
            d = ms(kern, op[: -len("_split")], m=r["m"], n=r["n"], k=r["k"])
            measured = True
            any_win |= d is not None and r["ms"] < d
            print(f"  {op[:-len('_skinny_tc_split')]:<22} {str([r['m'], r['n'], r['k']]):<20} {fmt(d, '.4f')} -> {r['ms']:.4f}")
    verdict("splitk", measured, any_win,
            "a tuning candidate: tuning keeps it only at the shapes where it wins",
            win="faster than skinny_tc at some shape", lose="never faster than skinny_tc")

    # weight-only int8 from 256 rows (DEQUANT_MIN_M), on by default since 2026-11-27 without a
    # device: the weight widened to bf16 for the wgmma tiles, against the mma.sync tiles
    # (`_mma`: timed with JOBX_GEMM_DEQUANT off; only on a card with the wgmma tiles)
    print("weight-only int8 (m >= 256: widened for the wgmma tiles by default): ms mma.sync -> default")
    compared, slower = 0, []
    for r in kern:
        if r.get("op") == "gemm_int8_weight_only" and "ms" in r and r.get("m", 0) > 32:
            old_ms = ms(kern, "gemm_int8_weight_only_mma", m=r["m"], n=r["n"], k=r["k"])
            bf = ms(kern, "gemm_bf16", m=r["m"], n=r["n"], k=r["k"])
            if r["m"] >= 256 and old_ms is not None:
                compared += 1
                if r["ms"] >= old_ms:
                    slower.append(r["m"])
            print(f"  {str([r['m'], r['n'], r['k']]):<22} {fmt(old_ms, '.4f')} -> {r['ms']:.4f}"
                  f"  (bf16 weights {fmt(bf, '.4f')})")
    top_batch = max((x.get("batch", 0) for x in e2e), default=0)
    e2e_int8 = {r.get("engine"): r["seconds"] for r in e2e if "seconds" in r
                and r.get("engine") in ("jobx-cuda-int8", "jobx-cuda-int8-no-widen")
                and r.get("batch") == top_batch}
    note = ""
    if len(e2e_int8) == 2:
        note = (f"e2e int8 weights at the largest batch: {e2e_int8['jobx-cuda-int8-no-widen']:.3f} s "
                f"without the widening -> {e2e_int8['jobx-cuda-int8']:.3f} s with it")
    # its op cases are a family of gpu-check's own ("dequant", first): the established run
    # takes the mma.sync tiles
    st = status.get("dequant")
    if st is None:
        v = "not verified: its op cases did not run (the 'opt-in dequant' family)"
    elif st != 0:
        v = (f"op cases failed (exit {st}): make JOBX_GEMM_DEQUANT off by default (runtime.rs, "
             "gemm_dequant; the check turned it off for its later steps) and debug from the FAIL "
             "lines in op-tests.log")
    elif not compared:
        v = "passed, not compared (no _mma rows: no wgmma tiles, or the bench stopped early)"
    elif slower:
        v = (f"passed, not faster than the mma.sync tiles at m = {sorted(set(slower))}: raise "
             "DEQUANT_MIN_M above that (runtime.rs)")
    else:
        v = "passed and faster than the mma.sync tiles at every timed shape from 256 rows: keep the default"
    decisions["dequant"] = dict(verdict=v, note=note)
    print(f"  => dequant: {v}{'  (' + note + ')' if note else ''}")

    # end to end: HF's best against ours; the opt-in runs against the graph runs
    print("end to end (seconds; speed-up over HF's fastest run; target >= 10x at batch 32)")
    hf = {r["batch"]: r["seconds"] for r in e2e if r.get("engine") == "hf-bf16" and "seconds" in r}
    runs = {}
    for r in e2e:
        if r.get("engine", "").startswith("jobx-cuda") and "seconds" in r and "beams" not in r:
            runs.setdefault(r["batch"], {})[r["engine"]] = r["seconds"]
    for b in sorted(runs):
        eng = runs[b]
        # the default configuration (bf16 weights, CUDA graphs), and the fastest run of one that
        # could become it (an opt-in kernel family once made the default): bf16 weights and
        # bf16 K/V, as HF's; the int8 runs and the kernel profile (events around every launch)
        # are shown but never count
        dflt = eng.get("jobx-cuda-bf16-graphs")
        best_eng = min((k for k in eng if k.startswith("jobx-cuda-bf16") and "cross-kv-int8" not in k
                        and "kernel-profile" not in k), key=eng.get, default=None)
        best = eng.get(best_eng)
        x = lambda v: hf[b] / v if b in hf and v else None
        line = "  ".join(f"{k[len('jobx-cuda-'):]} {v:.3f}" for k, v in sorted(eng.items()))
        print(f"  batch {b:<3} hf {fmt(hf.get(b))}  {line}")
        print(f"            default (graphs) {fmt(x(dflt), '.1f')}x, fastest ({best_eng}) {fmt(x(best), '.1f')}x")
        decisions.setdefault("e2e", {})[str(b)] = dict(hf=hf.get(b), default=dflt, fastest=best,
                                                       fastest_engine=best_eng,
                                                       speedup_default=x(dflt), speedup_fastest=x(best))
    top = max(runs) if runs else None
    q8 = [(b, runs[b].get("jobx-cuda-bf16-cross-kv-int8"), runs[b].get("jobx-cuda-bf16")) for b in runs]
    q8 = [x for x in q8 if x[1] and x[2]]
    # --cross-kv int8 is a user's choice that moves the logits, never a default: the verdict
    # says whether the rewritten kernel made it a speed-up over bf16 K/V
    verdict("q8decode", bool(q8), all(a < p for _, a, p in q8),
            ", ".join(f"b{b} {a:.3f} vs bf16 K/V {p:.3f}" for b, a, p in q8),
            win="--cross-kv int8 now faster than bf16 K/V at every batch",
            lose="--cross-kv int8 not faster than bf16 K/V everywhere",
            then=" (the flag stays opt-in, since it moves the logits: say in the README that it pays)",
            otherwise=" (the flag stays opt-in)")
    # (the rows with the norms fused, "rms": true, are the rms family's, below)
    chain = {(r["graph"], r["pdl"]): r["us_per_kernel"] for r in kern
             if r.get("op") == "decode_chain" and "us_per_kernel" in r and not r.get("rms", False)}
    g_off, g_on = chain.get((True, False)), chain.get((True, True))
    # PDL on by default (since 2026-11-28): the default graphs run against its -no-pdl twin;
    # earlier folders: the default (PDL off) against the -pdl run or a PDL-only -optin run
    top_runs = runs.get(top, {}) if top else {}
    e_off = top_runs.get("jobx-cuda-bf16-graphs-no-pdl")
    e_on = top_runs.get("jobx-cuda-bf16-graphs") if e_off is not None else None
    if e_off is None:
        e_off = top_runs.get("jobx-cuda-bf16-graphs")
        e_on = top_runs.get("jobx-cuda-bf16-graphs-pdl")
    if e_on is None and top is not None:
        # PDL the only family that passed: the -optin run is PDL alone
        e_on = next((r["seconds"] for r in e2e if r.get("batch") == top and "seconds" in r
                     and r.get("engine") == "jobx-cuda-bf16-graphs-optin"
                     and r.get("optin") == {"JOBX_PDL": "1"}), None)
    # the decode chain is the controlled measurement; end to end, PDL's share is inside the
    # run-to-run noise (H100, 2026-11-28: 1.058 -> 1.030 s in one run, 1.014 -> 1.023 in the
    # next), so there it only has to be no more than 3% slower
    verdict("pdl", g_on is not None or e_on is not None,
            (g_on is None or (g_off is not None and g_on < g_off))
            and (e_on is None or (e_off is not None and e_on <= 1.03 * e_off)),
            f"decode_chain us/kernel as a graph {fmt(g_off, '.2f')} -> {fmt(g_on, '.2f')}; "
            f"e2e batch {top} graphs {fmt(e_off)} -> with PDL {fmt(e_on)} (end to end counts only beyond 3%)")
    # the RMS norms fused into the decode GEMMs (Gpu::gemm_rms, opt-in, written 2026-11-28
    # without a device): the decode chain's step time with them against without, both as a
    # replayed graph (the default) under the same PDL setting
    steps = {(r["graph"], r["pdl"], r.get("rms", False)): (r["ms"], r.get("kernels")) for r in kern
             if r.get("op") == "decode_chain" and "ms" in r}
    fused = [(k, v) for k, v in steps.items() if k[2]]
    rms_rows = [(k, v, steps.get((k[0], k[1], False))) for k, v in fused]
    for (graph, pdl, _), (f_ms, f_k), base in rms_rows:
        print(f"  decode_chain graph {graph} pdl {pdl}: separate norms {fmt(base[0] if base else None, '.4f')} ms"
              f" ({base[1] if base else '-'} kernels) -> fused {f_ms:.4f} ms ({f_k} kernels)")
    # (a fused row without its baseline is not a measurement)
    graph_rows = [(v, b) for k, v, b in rms_rows if k[0] and b is not None]
    verdict("rms", bool(graph_rows), bool(graph_rows) and all(v[0] < b[0] for v, b in graph_rows),
            "decode_chain step as a graph, the norms fused against separate (JOBX_GEMM_RMS=1)",
            win="a faster decode step", lose="not a faster decode step")
    s = os.path.join(out, "summary.json")
    summary = json.load(open(s)) if os.path.exists(s) else {}
    summary["decisions"] = decisions
    json.dump(summary, open(s, "w"), indent=1)


if __name__ == "__main__":
    main()
