"""Write a copy of a Hugging Face model whose checkpoint carries calibrated FP8 attention scales.

This is today's vLLM path to calibrated FP8 KV caches (what llm-compressor's `kv_cache_scheme`
produces), done by hand for a small model: run the bf16 model on calibration text, record per
layer the largest |q| and |k| after the rotary embedding and the largest |v| -- what vLLM's
attention quantizes -- and store scale = max|x| / 448 (the largest FP8 E4M3 value), so that the
observed range maps onto the whole FP8 range. vLLM loads per-tensor scales from checkpoint
tensors named `model.layers.N.self_attn.attn.{q,k,v,prob}_scale` into its attention layers.

prob_scale (for softmax probabilities, which lie in [0, 1]) is written only with --prob-scale:
vLLM's CUDA attention backends never read it (only ROCm ones do), so writing it changes no
numerics on an H100 and only silences vLLM's `Using uncalibrated q_scale ... and/or prob_scale`
warning.

The copy shares the weight files with the source (hard links where possible) and adds
`kv_scales.safetensors` and `kv_scales.json` (the observed maxima, scales and calibration size).
The calibration text is built in (English prose, not the user's data), so the scales are
reproducible.

usage: python calibrate_kv_scales.py MODEL_DIR OUT_DIR [--tokens N] [--prob-scale]

Needs torch, transformers and safetensors. No network access.
"""

import argparse
import json
import os
import shutil
import sys

FP8_E4M3_MAX = 448.0

TEXT = """\
The harbour town woke slowly. Fishing boats came in with the tide, and the market filled with
voices, crates of ice and the smell of salt. An old ferry carried workers across the bay every
half hour, and the schoolchildren counted the gulls that followed it. In the library on the hill
a clerk sorted letters by date, noting the weather, the price of bread and the names of ships.
Mathematics is the study of structure and change. A prime number has exactly two divisors; the
sum of the first n odd numbers is n squared; seventeen times three is fifty-one. Engineers use
these facts to design bridges, compress images and route messages across networks. When a
function is continuous on a closed interval, it reaches its maximum and its minimum there.
The recipe asks for two cups of flour, a pinch of salt, one egg and enough milk to make a smooth
batter. Let it rest for an hour, heat the pan until a drop of water dances on it, and pour thin
layers. Serve the pancakes with lemon and sugar, or fold them around cheese and ham.
In 1969 two astronauts walked on the Moon while a third orbited above them. The lunar module had
less computing power than a modern calculator, yet its software was carefully tested, and the
crew trained for every failure anyone could imagine. The mission returned with rocks that are
still studied today.
"""


def log(msg):
    print(f"calibrate_kv_scales: {msg}", file=sys.stderr, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="Hugging Face model directory (bf16 or float32 weights)")
    parser.add_argument("out", help="output directory (must not exist)")
    parser.add_argument("--tokens", type=int, default=4096, help="calibration tokens (default 4096)")
    parser.add_argument("--prob-scale", action="store_true",
                        help="also write prob_scale = 1/448 (unused by CUDA backends; see above)")
    args = parser.parse_args(argv)

    import torch
    from safetensors.torch import save_file
    from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if os.path.exists(args.out):
        raise SystemExit(f"calibrate_kv_scales: output exists: {args.out}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(args.model)

    amax = {}  # layer index -> {"q": float, "k": float, "v": float}

    def recording_attention(module, query, key, value, attention_mask, **kwargs):
        m = amax.setdefault(module.layer_idx, {"q": 0.0, "k": 0.0, "v": 0.0})
        for name, t in (("q", query), ("k", key), ("v", value)):
            m[name] = max(m[name], t.detach().abs().max().float().item())
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("kvbench_calibration", recording_attention)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, attn_implementation="kvbench_calibration").to(device).eval()

    # Calibration batches: the prose as plain text, and chat-formatted questions about it, in
    # chunks of at most 1024 tokens, until --tokens tokens were seen.
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    chat = tok.apply_chat_template(
        [{"role": "user", "content": TEXT + "\nSummarise the paragraphs above in one sentence."}],
        add_generation_prompt=True)
    if not isinstance(chat, list):
        chat = chat["input_ids"]
    stream, seen = [], 0
    while len(stream) < args.tokens:
        stream.extend(chat)
        stream.extend(ids)
    with torch.no_grad():
        for start in range(0, args.tokens, 1024):
            chunk = stream[start:min(start + 1024, args.tokens)]
            model(torch.tensor([chunk], device=device))
            seen += len(chunk)
    if len(amax) != model.config.num_hidden_layers:
        raise SystemExit(f"calibrate_kv_scales: saw {len(amax)} attention layers, "
                         f"expected {model.config.num_hidden_layers}")

    tensors, summary = {}, []
    for i in sorted(amax):
        m = amax[i]
        row = {"layer": i}
        for name in ("q", "k", "v"):
            scale = max(m[name], 1e-6) / FP8_E4M3_MAX
            tensors[f"model.layers.{i}.self_attn.attn.{name}_scale"] = torch.tensor(scale, dtype=torch.float32)
            row[f"{name}_absmax"] = m[name]
            row[f"{name}_scale"] = scale
        if args.prob_scale:
            tensors[f"model.layers.{i}.self_attn.attn.prob_scale"] = torch.tensor(1.0 / FP8_E4M3_MAX)
        summary.append(row)

    os.makedirs(args.out)
    for name in os.listdir(args.model):
        src, dst = os.path.join(args.model, name), os.path.join(args.out, name)
        if os.path.isfile(src):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    save_file(tensors, os.path.join(args.out, "kv_scales.safetensors"))
    clipped = [r["layer"] for r in summary if max(r["q_absmax"], r["k_absmax"], r["v_absmax"]) > FP8_E4M3_MAX]
    info = {
        "calibration_tokens": seen,
        "fp8_e4m3_max": FP8_E4M3_MAX,
        "rule": "scale = max|x| / 448, per layer, q and k after the rotary embedding",
        "prob_scale_written": args.prob_scale,
        "layers_whose_range_exceeds_448_at_scale_1": clipped,
        "layers": summary,
    }
    with open(os.path.join(args.out, "kv_scales.json"), "w") as f:
        json.dump(info, f, indent=1)
    worst = max(summary, key=lambda r: max(r["q_absmax"], r["k_absmax"], r["v_absmax"]))
    log(f"{len(summary)} layers calibrated on {seen} tokens; largest |q|,|k|,|v| "
        f"{worst['q_absmax']:.1f}, {worst['k_absmax']:.1f}, {worst['v_absmax']:.1f} (layer "
        f"{worst['layer']}); layers beyond the FP8 range at scale 1.0: {clipped or 'none'}")


if __name__ == "__main__":
    main()
