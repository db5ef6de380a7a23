#!/usr/bin/env python3
"""Generate golden reference fixtures (format `jobx-reference-v1`) from HF transformers.

Each fixture is a folder under `--out` (default `tests/fixtures`) holding:
  * the HF model files written by `save_pretrained` (`config.json`, `model.safetensors`,
    `generation_config.json`), from a tiny seeded random-weight float32 model;
  * optionally a PEFT LoRA adapter in the subfolder `adapter/` (`adapter_config.json`,
    `adapter_model.safetensors`);
  * `reference.json` (format, arch, dtype, adapter, tolerance, case list);
  * `reference.safetensors` with the per-case tensors `caseK.input_ids`, `caseK.attention_mask`,
    `caseK.decoder_input_ids` (T5), `caseK.position_ids` (Mistral), `caseK.logits`, `caseK.greedy`,
    and for one T5 case per fixture the beam-search extension `caseK.beam` (+ `caseK.beam_score`).

Usage:
    python tools/gen_reference.py --out tests/fixtures --all
    python tools/gen_reference.py --out tests/fixtures --name t5-relu-tied [--name ...]
    python tools/gen_reference.py --list

Regeneration is deterministic for a given torch/transformers/peft version (see
`tests/fixtures/README.md`): all randomness comes from seeded torch generators, computation runs
single-threaded, and seed retries (to avoid degenerate random models) follow a fixed order.

Why the post-processing of config.json: transformers 5.x's `T5Config` always stores
`tie_word_embeddings: true` and an extra `scale_decoder_outputs` flag, and ties `lm_head` to `shared`
even for a T5 v1.1 config. Real FLAN-T5 checkpoints instead say `tie_word_embeddings: false` and ship
a separate `lm_head.weight`; we write fixtures in that real-checkpoint form (untied `lm_head` with its
own random weights, `tie_word_embeddings` = the true value, no `scale_decoder_outputs`), and check that
transformers reloads them to the same logits. Likewise Mistral configs get a top-level `rope_theta`
(the key real Mistral checkpoints use) next to transformers 5's `rope_parameters`.
"""

import argparse
import json
import math
import os
import shutil
import sys

import torch
from transformers import LogitsProcessorList

FORMAT = "jobx-reference-v1"
TOLERANCE_REL = 1e-4
# A greedy step whose top-1/top-2 logit gap is below this is too fragile for a reference
# (a correct f32 reimplementation could legitimately flip it); such seeds are rejected.
MIN_GREEDY_MARGIN = 2e-3
MAX_SEED_TRIES = 200
# Beam results must not change when every log-prob gets uniform noise of this size.
BEAM_JITTER = 1e-3

# ----------------------------------------------------------------------------------------------
# Fixture definitions
# ----------------------------------------------------------------------------------------------
# eos_mode: "stop"  -> eos_token_id is set to a token that greedy emits for the first time at a
#                      step in `eos_step` (inclusive range of 0-based step indices), so the greedy
#                      case stops at EOS before max_new_tokens;
#           "never" -> eos_token_id is a token greedy never emits, so greedy runs to max_new_tokens.
# rel_bias_scale: multiplies the T5 relative_attention_bias init (std d_model**-0.5) so that the
#                 position buckets visibly matter in the logits.
# out_scale: multiplies the T5 attention-output `o` and FFN `wo` weights; with tied embeddings the
#            input embedding otherwise dominates the residual stream and greedy repeats its input.
# init_range: Mistral initializer_range (HF default 0.02 gives near-flat logits at these sizes).
# lora: optional PEFT LoRA settings; `delta_ratio` rescales lora_B so that
#       ||scaling * B @ A||_F = delta_ratio * ||W||_F per adapted module (init_lora_weights=False
#       gives kaiming-uniform A and B, whose product would otherwise swamp the tiny base weights).

T5_GATED_GELU = dict(
    vocab_size=300, d_model=32, d_kv=16, num_heads=2, d_ff=48, num_layers=2, num_decoder_layers=2,
    relative_attention_num_buckets=16, relative_attention_max_distance=32,
    feed_forward_proj="gated-gelu", tie_word_embeddings=False,
)

MISTRAL_GQA4 = dict(
    vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=8, num_key_value_heads=2, head_dim=8, sliding_window=16,
    rope_theta=1e4, tie_word_embeddings=False, max_position_embeddings=512,
)

FIXTURES = {
    "t5-relu-tied": dict(
        arch="t5", seed=1000, eos_mode="stop", eos_step=(26, 36), rel_bias_scale=30.0,
        out_scale=10.0,
        config=dict(
            vocab_size=256, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=3,
            num_decoder_layers=2, relative_attention_num_buckets=8,
            relative_attention_max_distance=20, feed_forward_proj="relu",
            tie_word_embeddings=True,
        ),
        max_new_tokens=44, beam_max_length=41,
        description="original-T5 style: ReLU FFN, tied lm_head (decoder output scaled by "
                    "d_model**-0.5), 3 enc / 2 dec layers, 8 buckets / max distance 20; greedy "
                    "stops at EOS at step > max distance",
    ),
    "t5-gated-gelu-untied": dict(
        arch="t5", seed=2000, eos_mode="never", rel_bias_scale=8.0,
        config=dict(T5_GATED_GELU),
        max_new_tokens=48, beam_max_length=41,
        description="FLAN-T5 / T5 v1.1 style: gated-GELU (gelu_new) FFN, untied lm_head, "
                    "2 heads x d_kv 16, 16 buckets / max distance 32; greedy runs the full 48 "
                    "tokens (past max distance) without EOS",
    ),
    "t5-gated-silu": dict(
        arch="t5", seed=3000, eos_mode="stop", eos_step=(24, 34), rel_bias_scale=8.0,
        config=dict(
            vocab_size=263, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
            num_decoder_layers=1, relative_attention_num_buckets=6,
            relative_attention_max_distance=12, feed_forward_proj="gated-silu",
            tie_word_embeddings=False,
        ),
        max_new_tokens=40, beam_max_length=41,
        description="gated-SiLU FFN, untied, 2 enc / 1 dec layers, 6 buckets / max distance 12, "
                    "odd vocab 263; greedy stops at EOS",
    ),
    "t5-lora": dict(
        arch="t5", seed=6000, eos_mode="never", rel_bias_scale=8.0,
        config=dict(T5_GATED_GELU),
        max_new_tokens=48, beam_max_length=41,
        lora=dict(r=4, lora_alpha=8, target_modules=["q", "v", "wi_0", "wo"], use_rslora=False,
                  delta_ratio=0.5),
        description="base like t5-gated-gelu-untied plus a PEFT LoRA adapter (r=4, alpha=8, "
                    "scaling 2) on q, v, wi_0, wo; references computed with the unmerged PeftModel",
    ),
    "mistral-gqa4-window": dict(
        arch="mistral", seed=4000, eos_mode="stop", eos_step=(22, 27), init_range=0.15,
        config=dict(MISTRAL_GQA4),
        prompt_len=10, max_new_tokens=30, padded_lens=(40, 29),
        description="GQA 8 query / 2 KV heads (4:1), head_dim 8, sliding_window 16, rope_theta "
                    "1e4, untied; left-padded batch longer than the window; greedy stops at EOS "
                    "after the sequence passes the window",
    ),
    "mistral-gqa2-theta1e6": dict(
        arch="mistral", seed=5000, eos_mode="never", init_range=0.15,
        config=dict(
            vocab_size=317, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=None,
            rope_theta=1e6, tie_word_embeddings=True, max_position_embeddings=512,
        ),
        prompt_len=10, max_new_tokens=30, padded_lens=(40, 29),
        description="GQA 4 query / 2 KV heads (2:1), explicit head_dim 16 != hidden/heads (12), "
                    "rope_theta 1e6, no sliding window, tied embeddings, odd vocab 317",
    ),
    "mistral-lora": dict(
        arch="mistral", seed=7000, eos_mode="never", init_range=0.15,
        config=dict(
            vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, head_dim=8, sliding_window=16,
            rope_theta=1e4, tie_word_embeddings=False, max_position_embeddings=512,
        ),
        prompt_len=10, max_new_tokens=30, padded_lens=(40, 29),
        lora=dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"],
                  use_rslora=False, delta_ratio=0.5),
        description="small Mistral (hidden 32, 4 query / 1 KV head, window 16) plus a PEFT LoRA "
                    "adapter (r=4, alpha=16, scaling 4) on q_proj, v_proj, gate_proj, down_proj",
    ),
}


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

class Reject(Exception):
    """A seed produced a degenerate or fragile model; try the next seed."""


def rand_ids(gen, shape, lo, hi):
    return torch.randint(lo, hi, shape, generator=gen, dtype=torch.long)


def check_sequence(ids, what, min_len=20, min_distinct=8, max_run=3):
    ids = list(ids)
    if len(ids) < min_len:
        raise Reject(f"{what}: only {len(ids)} tokens")
    if len(set(ids)) < min_distinct:
        raise Reject(f"{what}: only {len(set(ids))} distinct tokens")
    run, best = 1, 1
    for a, b in zip(ids, ids[1:]):
        run = run + 1 if a == b else 1
        best = max(best, run)
    if best > max_run:
        raise Reject(f"{what}: a token repeats {best} times in a row")


def min_margin(step_logits):
    """Smallest top-1 minus top-2 gap over the greedy steps (list of [1, V] tensors)."""
    gaps = []
    for lg in step_logits:
        top = torch.topk(lg[0].float(), 2).values
        gaps.append(float(top[0] - top[1]))
    return min(gaps)


def greedy(model, eos, max_new_tokens, **inputs):
    """HF greedy generate; returns (new ids list, raw step logits)."""
    out = model.generate(
        **inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
        eos_token_id=eos, pad_token_id=0, return_dict_in_generate=True, output_logits=True,
    )
    return out.sequences, list(out.logits)


def pick_eos(seq, spec, vocab, forbidden):
    """Choose the EOS id from an EOS-free greedy run `seq` (list of new ids)."""
    if spec["eos_mode"] == "stop":
        lo, hi = spec["eos_step"]
        first = {}
        for i, t in enumerate(seq):
            first.setdefault(t, i)
        cands = sorted((i, t) for t, i in first.items() if lo <= i <= hi and t not in forbidden)
        if not cands:
            raise Reject("no token first emitted in the wanted EOS step range")
        return cands[0][1], cands[0][0]
    # "never": smallest id not emitted and not special.
    for t in range(1, vocab):
        if t not in seq and t not in forbidden:
            return t, None
    raise Reject("every token is emitted")


class Jitter:
    """Logits processor adding seeded uniform noise in [-eps, eps] (beam stability check)."""

    def __init__(self, seed, eps):
        self.gen = torch.Generator().manual_seed(seed)
        self.eps = eps

    def __call__(self, input_ids, scores):
        noise = torch.rand(scores.shape, generator=self.gen) * 2 - 1
        return scores + self.eps * noise


def rescale_lora(peft_model, ratio):
    """Rescale each lora_B so that ||scaling * B @ A||_F == ratio * ||W_base||_F."""
    from peft.tuners.lora import LoraLayer
    for name, mod in peft_model.named_modules():
        if isinstance(mod, LoraLayer) and "default" in mod.lora_A:
            a = mod.lora_A["default"].weight
            b = mod.lora_B["default"].weight
            s = mod.scaling["default"]
            w = mod.get_base_layer().weight
            delta = s * (b @ a)
            with torch.no_grad():
                b.mul_(ratio * w.norm() / delta.norm())


def fix_config_json(path, updates, drop=()):
    with open(path) as f:
        cfg = json.load(f)
    for k in drop:
        cfg.pop(k, None)
    cfg.update(updates)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def set_eos(model, eos):
    model.config.eos_token_id = eos
    model.generation_config.eos_token_id = eos


def save_adapter(peft_model, folder):
    peft_model.save_pretrained(folder)
    # peft writes a model-card README.md; it is noise for a test fixture.
    card = os.path.join(folder, "README.md")
    if os.path.exists(card):
        os.remove(card)
    # target_modules comes from a Python set: sort it so the file is byte-stable across runs.
    path = os.path.join(folder, "adapter_config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["target_modules"] = sorted(cfg["target_modules"])
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def apply_lora(model, spec, task_type):
    from peft import LoraConfig, get_peft_model
    lo = spec["lora"]
    cfg = LoraConfig(
        r=lo["r"], lora_alpha=lo["lora_alpha"], target_modules=list(lo["target_modules"]),
        use_rslora=lo["use_rslora"], lora_dropout=0.0, bias="none",
        init_lora_weights=False, task_type=task_type,
    )
    pm = get_peft_model(model, cfg)
    rescale_lora(pm, lo["delta_ratio"])
    pm.eval()
    return pm


# ----------------------------------------------------------------------------------------------
# T5
# ----------------------------------------------------------------------------------------------

def build_t5(spec, seed):
    from transformers import T5Config, T5ForConditionalGeneration
    torch.manual_seed(seed)
    c = dict(spec["config"])
    tied = c["tie_word_embeddings"]
    cfg = T5Config(dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **c)
    model = T5ForConditionalGeneration(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_attention_bias.weight"):
                p.mul_(spec["rel_bias_scale"])
            elif name.endswith((".o.weight", ".wo.weight")):
                p.mul_(spec.get("out_scale", 1.0))
        if not tied:
            # transformers 5 ties lm_head to `shared` even for T5 v1.1 configs; give the head its own
            # weights (std 1.0, HF's T5 init for an untied head) and drop the tie, as in FLAN-T5.
            model.lm_head.weight = torch.nn.Parameter(torch.randn(cfg.vocab_size, cfg.d_model))
            model.all_tied_weights_keys.pop("lm_head.weight", None)
    assert (model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()) == tied
    assert model.config.scale_decoder_outputs == tied
    model.eval()
    return model


def make_t5(name, spec, out_dir, seed):
    base = build_t5(spec, seed)
    V = base.config.vocab_size
    model = apply_lora(base, spec, "SEQ_2_SEQ_LM") if spec.get("lora") else base
    gen = torch.Generator().manual_seed(seed * 7 + 1)
    N = spec["max_new_tokens"]

    # --- case1 (greedy): find the EOS id from an EOS-free greedy run, then re-run with it.
    src1 = rand_ids(gen, (1, 15), 2, V)
    m1 = torch.ones_like(src1)
    set_eos(base, None)
    with torch.no_grad():
        seq, _ = greedy(model, None, N, input_ids=src1, attention_mask=m1)
    free = seq[0, 1:].tolist()  # drop decoder start token
    if len(free) != N:
        raise Reject("EOS-free greedy stopped early")
    check_sequence(free, "eos-free greedy")
    eos, eos_at = pick_eos(free, spec, V, forbidden={0})
    set_eos(base, eos)
    with torch.no_grad():
        seq, step_logits = greedy(model, eos, N, input_ids=src1, attention_mask=m1)
    g = seq[0, 1:].tolist()
    expect = free[: eos_at + 1] if eos_at is not None else free
    assert g == expect, (g, expect)
    check_sequence(g, "greedy")
    margin = min_margin(step_logits)
    if margin < MIN_GREEDY_MARGIN:
        raise Reject(f"greedy margin {margin:.2e}")

    # --- beam search on the same source (extension of the format).
    Lb = spec["beam_max_length"]
    with torch.no_grad():
        bo = model.generate(
            input_ids=src1, attention_mask=m1, do_sample=False, num_beams=4, max_length=Lb,
            early_stopping=True, eos_token_id=eos, pad_token_id=0,
            return_dict_in_generate=True, output_scores=True,
        )
    beam = bo.sequences[0, 1:].tolist()
    check_sequence(beam, "beam")
    # Beam ranking can hinge on near-ties of summed log-probs; require the result to survive
    # tiny perturbations of the log-probs (well above f32 reimplementation noise).
    for trial in range(3):
        with torch.no_grad():
            nb = model.generate(
                input_ids=src1, attention_mask=m1, do_sample=False, num_beams=4, max_length=Lb,
                early_stopping=True, eos_token_id=eos, pad_token_id=0,
                logits_processor=LogitsProcessorList([Jitter(seed * 10 + trial, BEAM_JITTER)]),
            )
        if nb[0, 1:].tolist() != beam:
            raise Reject("beam result flips under log-prob jitter")
    beam_eos = beam[-1] == eos

    # --- logits.
    cases, tensors = [], {}

    def run_logits(ids, mask, dec):
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits.float()

    # case0: padded batch of 3, right padding, different source lengths.
    lens = [17, 9, 13]
    S = max(lens)
    ids0 = rand_ids(gen, (3, S), 2, V)
    mask0 = torch.zeros((3, S), dtype=torch.long)
    for b, L in enumerate(lens):
        mask0[b, :L] = 1
        ids0[b, L:] = 0
    dec0 = torch.cat([torch.zeros((3, 1), dtype=torch.long), rand_ids(gen, (3, 11), 2, V)], 1)
    tensors.update({"case0.input_ids": ids0, "case0.attention_mask": mask0,
                    "case0.decoder_input_ids": dec0, "case0.logits": run_logits(ids0, mask0, dec0)})
    cases.append(dict(name="case0", batch=3, has_logits=True, has_greedy=False, max_new_tokens=None))

    # case1: greedy + teacher-forced logits for [start] + greedy[:-1] + beam.
    dec1 = torch.tensor([[0] + g[:-1]], dtype=torch.long)
    lg1 = run_logits(src1, m1, dec1)
    assert lg1[0].argmax(-1).tolist() == g
    tensors.update({"case1.input_ids": src1, "case1.attention_mask": m1,
                    "case1.decoder_input_ids": dec1, "case1.logits": lg1,
                    "case1.greedy": torch.tensor([g], dtype=torch.long),
                    "case1.beam": torch.tensor([beam], dtype=torch.long),
                    "case1.beam_score": bo.sequences_scores.float().reshape(1)})
    cases.append(dict(name="case1", batch=1, has_logits=True, has_greedy=True, max_new_tokens=N,
                      beam=dict(num_beams=4, max_length=Lb, early_stopping=True)))

    # case2: long source (70 tokens), decoder sequence longer than max distance.
    ids2 = rand_ids(gen, (1, 70), 2, V)
    m2 = torch.ones_like(ids2)
    dec_len = spec["config"]["relative_attention_max_distance"] + 4
    dec2 = torch.cat([torch.zeros((1, 1), dtype=torch.long), rand_ids(gen, (1, dec_len - 1), 2, V)], 1)
    tensors.update({"case2.input_ids": ids2, "case2.attention_mask": m2,
                    "case2.decoder_input_ids": dec2, "case2.logits": run_logits(ids2, m2, dec2)})
    cases.append(dict(name="case2", batch=1, has_logits=True, has_greedy=False, max_new_tokens=None))

    check_logits(tensors, cases)
    effects = {}
    # How much the decoder's unidirectional bucketing matters: redo case2 with the encoder's
    # bidirectional bucket formula in the decoder (the candle T5 bug noted in MODEL-NOTES.md).
    sa = base.decoder.block[0].layer[0].SelfAttention
    sa.is_decoder = False
    effects["bidirectional_decoder_bucket_effect"] = effect(run_logits(ids2, m2, dec2),
                                                            tensors["case2.logits"])
    sa.is_decoder = True
    if effects["bidirectional_decoder_bucket_effect"] < 0.1:
        raise Reject("decoder bucket formula barely matters")
    if spec.get("lora"):
        with model.disable_adapter():
            effects["lora_effect"] = effect(run_logits(ids0, mask0, dec0), tensors["case0.logits"])
        if effects["lora_effect"] < 0.1:
            raise Reject("adapter barely changes the logits")

    # --- write the model folder.
    if spec.get("lora"):
        # peft wrapped `base` in place (its state dict now has base_layer/lora_* keys); rebuild
        # the identical plain base model from the seed for the model folder.
        base = build_t5(spec, seed)
        set_eos(base, eos)
    write_t5_model(base, spec, out_dir)
    if spec.get("lora"):
        save_adapter(model, os.path.join(out_dir, "adapter"))

    info = dict(seed=seed, eos_token_id=eos, greedy_len=len(g), greedy_stops_at_eos=g[-1] == eos,
                greedy_min_margin=round(margin, 4), beam_len=len(beam), beam_ends_with_eos=beam_eos,
                **effects)
    return cases, tensors, info


def write_t5_model(base, spec, out_dir):
    base.save_pretrained(out_dir)
    tied = spec["config"]["tie_word_embeddings"]
    fix_config_json(os.path.join(out_dir, "config.json"),
                    {"tie_word_embeddings": tied, "decoder_start_token_id": 0},
                    drop=("scale_decoder_outputs",))


def reload_t5(out_dir, adapter):
    from transformers import T5ForConditionalGeneration
    m = T5ForConditionalGeneration.from_pretrained(out_dir, dtype=torch.float32)
    if adapter:
        from peft import PeftModel
        m = PeftModel.from_pretrained(m, os.path.join(out_dir, adapter))
    return m.eval()


# ----------------------------------------------------------------------------------------------
# Mistral
# ----------------------------------------------------------------------------------------------

def hf_position_ids(mask):
    # Mirrors HF generate for decoder-only models with left padding.
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def build_mistral(spec, seed):
    from transformers import MistralConfig, MistralForCausalLM
    torch.manual_seed(seed)
    c = dict(spec["config"])
    theta = c.pop("rope_theta")
    cfg = MistralConfig(
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        initializer_range=spec["init_range"], pad_token_id=0, bos_token_id=1, eos_token_id=2,
        attn_implementation="eager", **c,
    )
    cfg._attn_implementation = "eager"
    model = MistralForCausalLM(cfg)
    assert model.config._attn_implementation == "eager"
    tied = c["tie_word_embeddings"]
    assert (model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()) == tied
    with torch.no_grad():
        # RMSNorm weights init to 1; perturb them so a reader that ignores them fails.
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    model.eval()
    return model


def make_mistral(name, spec, out_dir, seed):
    base = build_mistral(spec, seed)
    V = base.config.vocab_size
    model = apply_lora(base, spec, "CAUSAL_LM") if spec.get("lora") else base
    gen = torch.Generator().manual_seed(seed * 7 + 1)
    N, P = spec["max_new_tokens"], spec["prompt_len"]

    prompt = rand_ids(gen, (1, P), 3, V)
    pm = torch.ones_like(prompt)
    set_eos(base, None)
    with torch.no_grad():
        seq, _ = greedy(model, None, N, input_ids=prompt, attention_mask=pm)
    free = seq[0, P:].tolist()
    if len(free) != N:
        raise Reject("EOS-free greedy stopped early")
    check_sequence(free, "eos-free greedy")
    eos, eos_at = pick_eos(free, spec, V, forbidden={0, 1})
    set_eos(base, eos)
    with torch.no_grad():
        seq, step_logits = greedy(model, eos, N, input_ids=prompt, attention_mask=pm)
    g = seq[0, P:].tolist()
    expect = free[: eos_at + 1] if eos_at is not None else free
    assert g == expect, (g, expect)
    check_sequence(g, "greedy")
    margin = min_margin(step_logits)
    if margin < MIN_GREEDY_MARGIN:
        raise Reject(f"greedy margin {margin:.2e}")

    cases, tensors = [], {}

    def run_logits(ids, mask):
        pos = hf_position_ids(mask)
        with torch.no_grad():
            return pos, model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()

    # case0: left-padded batch of 2, longer than the sliding window.
    lens = spec["padded_lens"]
    S = max(lens)
    ids0 = rand_ids(gen, (2, S), 3, V)
    mask0 = torch.zeros((2, S), dtype=torch.long)
    for b, L in enumerate(lens):
        mask0[b, S - L:] = 1
        ids0[b, : S - L] = 0
    pos0, lg0 = run_logits(ids0, mask0)
    # Cross-check against HF generate's own first step (its prefill logits of the last position).
    with torch.no_grad():
        o = model.generate(input_ids=ids0, attention_mask=mask0, do_sample=False, max_new_tokens=1,
                           eos_token_id=eos, pad_token_id=0, return_dict_in_generate=True,
                           output_logits=True)
    d = (o.logits[0].float() - lg0[:, -1]).abs().max().item()
    assert d < 1e-5, f"position_ids convention differs from generate(): {d}"
    tensors.update({"case0.input_ids": ids0, "case0.attention_mask": mask0,
                    "case0.position_ids": pos0, "case0.logits": lg0})
    cases.append(dict(name="case0", batch=2, has_logits=True, has_greedy=False, max_new_tokens=None))

    # case1: greedy (prompt 10 + up to 30 new tokens, past the window) with prompt logits.
    pos1, lg1 = run_logits(prompt, pm)
    tensors.update({"case1.input_ids": prompt, "case1.attention_mask": pm,
                    "case1.position_ids": pos1, "case1.logits": lg1,
                    "case1.greedy": torch.tensor([g], dtype=torch.long)})
    cases.append(dict(name="case1", batch=1, has_logits=True, has_greedy=True, max_new_tokens=N))

    # case2: teacher-forced prompt + greedy[:-1] (unpadded, past the window); argmax at positions
    # >= P-1 reproduces the greedy ids, which separates prefill bugs from KV-cache bugs.
    ids2 = torch.cat([prompt, torch.tensor([g[:-1]], dtype=torch.long)], 1)
    m2 = torch.ones_like(ids2)
    pos2, lg2 = run_logits(ids2, m2)
    assert lg2[0, P - 1:].argmax(-1).tolist() == g
    tensors.update({"case2.input_ids": ids2, "case2.attention_mask": m2,
                    "case2.position_ids": pos2, "case2.logits": lg2})
    cases.append(dict(name="case2", batch=1, has_logits=True, has_greedy=False, max_new_tokens=None))

    check_logits(tensors, cases)
    effects = {}
    if spec.get("lora"):
        with model.disable_adapter():
            effects["lora_effect"] = effect(run_logits(ids0, mask0)[1], lg0)
        if effects["lora_effect"] < 0.1:
            raise Reject("adapter barely changes the logits")
    if base.config.sliding_window is not None:
        w = base.config.sliding_window
        base.config.sliding_window = None
        effects["window_effect"] = effect(run_logits(ids0, mask0)[1], lg0)
        base.config.sliding_window = w
        if effects["window_effect"] < 0.1:
            raise Reject("sliding window barely changes the logits")

    if spec.get("lora"):
        base = build_mistral(spec, seed)  # see make_t5: the wrapped model has lora keys
        set_eos(base, eos)
    base.save_pretrained(out_dir)
    # Real Mistral checkpoints carry a top-level rope_theta; transformers 5 writes rope_parameters.
    fix_config_json(os.path.join(out_dir, "config.json"),
                    {"rope_theta": spec["config"]["rope_theta"]})
    if spec.get("lora"):
        save_adapter(model, os.path.join(out_dir, "adapter"))

    info = dict(seed=seed, eos_token_id=eos, greedy_len=len(g), greedy_stops_at_eos=g[-1] == eos,
                greedy_min_margin=round(margin, 4), **effects)
    return cases, tensors, info


def reload_mistral(out_dir, adapter):
    from transformers import MistralForCausalLM
    m = MistralForCausalLM.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager")
    if adapter:
        from peft import PeftModel
        m = PeftModel.from_pretrained(m, os.path.join(out_dir, adapter))
    return m.eval()


# ----------------------------------------------------------------------------------------------
# Checks and driver
# ----------------------------------------------------------------------------------------------

def effect(other, ref):
    """Max |other - ref| in units of the reference logits' std (how much a feature matters)."""
    return round(float((other - ref).abs().max() / ref.std()), 3)


def check_logits(tensors, cases):
    for c in cases:
        if c["has_logits"]:
            lg = tensors[c["name"] + ".logits"]
            if not torch.isfinite(lg).all():
                raise Reject("non-finite logits")
            if lg.std() < 0.5:
                raise Reject(f"logits nearly flat (std {lg.std():.3f})")


def verify_reload(spec, out_dir, adapter, cases, tensors):
    """Reload the written files with transformers (+peft) and recompute every reference."""
    arch = spec["arch"]
    m = reload_t5(out_dir, adapter) if arch == "t5" else reload_mistral(out_dir, adapter)
    worst = 0.0
    for c in cases:
        n = c["name"]
        ids, mask = tensors[n + ".input_ids"], tensors[n + ".attention_mask"]
        with torch.no_grad():
            if c["has_logits"]:
                if arch == "t5":
                    lg = m(input_ids=ids, attention_mask=mask,
                           decoder_input_ids=tensors[n + ".decoder_input_ids"]).logits
                else:
                    lg = m(input_ids=ids, attention_mask=mask,
                           position_ids=tensors[n + ".position_ids"]).logits
                ref = tensors[n + ".logits"]
                worst = max(worst, ((lg - ref).abs() / (ref.abs() + 1e-3)).max().item())
            if c["has_greedy"]:
                # Uses the eos/pad ids from the written config.json / generation_config.json.
                out = m.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                                 max_new_tokens=c["max_new_tokens"])
                skip = 1 if arch == "t5" else ids.shape[1]
                got = out[0, skip:].tolist()
                assert got == tensors[n + ".greedy"][0].tolist(), (n, got)
            if "beam" in c:
                b = c["beam"]
                out = m.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 num_beams=b["num_beams"], max_length=b["max_length"],
                                 early_stopping=b["early_stopping"])
                assert out[0, 1:].tolist() == tensors[n + ".beam"][0].tolist(), n
    if worst > 1e-5:
        raise SystemExit(f"reload check failed: max rel logit diff {worst}")
    return worst


def generate_fixture(name, out_root):
    from safetensors.torch import save_file
    spec = FIXTURES[name]
    out_dir = os.path.join(out_root, name)
    make = make_t5 if spec["arch"] == "t5" else make_mistral
    last = None
    for attempt in range(MAX_SEED_TRIES):
        seed = spec["seed"] + attempt
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.makedirs(out_dir)
        try:
            cases, tensors, info = make(name, spec, out_dir, seed)
            break
        except Reject as e:
            last = e
            continue
    else:
        raise SystemExit(f"{name}: no usable seed in {MAX_SEED_TRIES} tries (last: {last})")

    adapter = "adapter" if spec.get("lora") else None
    ref = {
        "format": FORMAT,
        "arch": spec["arch"],
        "dtype": "float32",
        "adapter": adapter,
        "tolerance_rel": TOLERANCE_REL,
        "cases": cases,
    }
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(ref, f, indent=2)
        f.write("\n")
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    for k, v in tensors.items():
        assert v.dtype in (torch.int64, torch.float32), (k, v.dtype)
    save_file(tensors, os.path.join(out_dir, "reference.safetensors"))
    worst = verify_reload(spec, out_dir, adapter, cases, tensors)
    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(out_dir) for f in fs)
    info.update(name=name, tries=attempt + 1, bytes=size, reload_max_rel_diff=worst)
    print(json.dumps(info), flush=True)
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures", help="fixture root folder")
    ap.add_argument("--all", action="store_true", help="regenerate every fixture")
    ap.add_argument("--name", action="append", default=[], help="fixture to regenerate (repeatable)")
    ap.add_argument("--list", action="store_true", help="list fixtures and exit")
    args = ap.parse_args()

    if args.list:
        for n, s in FIXTURES.items():
            print(f"{n}: {s['description']}")
        return
    names = list(FIXTURES) if args.all else args.name
    if not names:
        ap.error("give --all or --name NAME (see --list)")
    for n in names:
        if n not in FIXTURES:
            ap.error(f"unknown fixture {n!r}; known: {', '.join(FIXTURES)}")

    # Determinism: one thread, no TF32 or other nondeterministic shortcuts (CPU only).
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    os.makedirs(args.out, exist_ok=True)
    for n in names:
        generate_fixture(n, args.out)


if __name__ == "__main__":
    main()
