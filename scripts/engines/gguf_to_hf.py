"""Convert a GGUF checkpoint into a plain Hugging Face model directory that vLLM can serve.

vLLM on CPU cannot serve a GGUF file directly. transformers can read one (it de-quantizes the
weights while loading), but the model it returns still carries the GGUF quantization config.
This script takes the de-quantized weights, rebuilds an ordinary model from the config
without `quantization_config`, loads the weights into it, saves it as safetensors and saves
the tokenizer (with the chat template stored in the GGUF) beside it. It then reloads the saved
directory and checks that it computes the same logits as the GGUF-loaded model.

usage: python gguf_to_hf.py MODEL.gguf OUT_DIR [--dtype float32|bfloat16|float16]

Needs torch, transformers, gguf and accelerate. No network access.
"""

import argparse
import os
import sys


def log(msg):
    print(f"gguf_to_hf: {msg}", file=sys.stderr, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", help="path to the .gguf file")
    parser.add_argument("out", help="output directory (must not exist or be empty)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the saved weights (default float32: Q4_1 weights de-quantize "
                             "exactly into it)")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = os.path.abspath(args.gguf)
    src_dir, gguf_name = os.path.split(gguf_path)
    if not os.path.isfile(gguf_path):
        raise SystemExit(f"gguf_to_hf: no such file: {gguf_path}")
    if os.path.isdir(args.out) and os.listdir(args.out):
        raise SystemExit(f"gguf_to_hf: output directory is not empty: {args.out}")
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)

    log(f"loading tokenizer from {gguf_name}")
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_name)
    if not getattr(tokenizer, "chat_template", None):
        raise SystemExit("gguf_to_hf: the GGUF carries no chat template")

    log(f"loading and de-quantizing weights from {gguf_name}")
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_name, dtype=dtype)
    gguf_model.eval()
    state = {name: t.detach().to(dtype) for name, t in gguf_model.state_dict().items()}

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = dtype

    log(f"rebuilding {type(gguf_model).__name__} from its config ({len(state)} tensors)")
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    result = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise SystemExit(f"gguf_to_hf: state dict mismatch: missing={missing} "
                         f"unexpected={result.unexpected_keys}")
    if tied:
        model.tie_weights()
    model.eval()

    os.makedirs(args.out, exist_ok=True)
    log(f"saving to {args.out}")
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)

    log("checking the saved model against the GGUF-loaded one")
    reloaded = AutoModelForCausalLM.from_pretrained(args.out, dtype=dtype)
    reloaded.eval()
    if getattr(reloaded.config, "quantization_config", None) is not None:
        raise SystemExit("gguf_to_hf: saved config still has a quantization_config")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    if not torch.is_tensor(ids):  # newer transformers may return a BatchEncoding
        ids = ids["input_ids"]
    with torch.no_grad():
        want = gguf_model(ids).logits
        got = reloaded(ids).logits
    diff = (want - got).abs().max().item()
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    if diff > tol:
        raise SystemExit(f"gguf_to_hf: saved model differs from the GGUF model (max |dlogit| {diff})")
    greedy = tokenizer.decode(reloaded.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:],
                              skip_special_tokens=True)
    log(f"ok: max |dlogit| {diff:.3g}; greedy reply starts {greedy!r}")


if __name__ == "__main__":
    main()
