#!/usr/bin/env python3
"""Write a GGUF model as a Hugging Face model folder (config.json, tokenizer, safetensors), the
layout vLLM and transformers read. Dequantises: the folder is larger than the GGUF file.

    .venv-torch/bin/python scripts/gguf_to_hf.py MODEL.gguf OUT_DIR [--dtype bfloat16]

Needs torch, transformers and gguf (the optional extra ``coserve[torch]``). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args()
    if not args.gguf.is_file():
        parser.error(f"{args.gguf}: no such file")
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        extra = "pip install 'coserve[torch]' (with the torch build for your machine)"
        parser.exit(2, f"{parser.prog}: error: {exc}: {extra}\n")

    where, name = str(args.gguf.resolve().parent), args.gguf.name
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        where, gguf_file=name, dtype=getattr(torch, args.dtype), local_files_only=True
    )
    args.out.mkdir(parents=True, exist_ok=True)
    # transformers marks a model read from GGUF as "quantized" and refuses save_pretrained; the
    # tensors are plain (dequantised) ones, so write them and a config without that mark.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(args.out)
    model.generation_config.save_pretrained(args.out)
    tensors = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)  # tied: readers take it from the input embedding
    save_file(tensors, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out} ({sum(p.stat().st_size for p in args.out.iterdir()) / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
