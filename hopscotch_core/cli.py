"""`hopscotch` command line.

    hopscotch info   --model default                       architecture summary, attention share
    hopscotch ask    --model default --skip 4,17 --prompt "What is 12 * 3?"   original vs skipped answer
    hopscotch export --model default --skip 4,17 --out small/   compact model (reload: hc.load_model("small/"))
    hopscotch app                                          the Streamlit app on the default model

Errors print one line ("error: ...") and exit with status 2; nothing prints a traceback unless HOPSCOTCH_DEBUG=1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from .errors import HopscotchError


def _blocks(text: str) -> list[int]:
    if not text.strip():
        return []
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--skip takes comma-separated block indices like 3,7; got {text!r}")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="'default', a Hub id, a model directory or a .gguf file")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: fp32 on CPU, bf16 on CUDA)")


def _load(args):
    from .loading import load_model

    print(f"loading {args.model} ...", file=sys.stderr)
    return load_model(args.model, device=args.device, dtype=args.dtype)


def _attach(model, args):
    from .scaling import attach, load_adapter

    if getattr(args, "adapter", None):
        hs = load_adapter(model, args.adapter)
        if args.skip:
            hs.set_skipped(args.skip)
        return hs
    return attach(model).skip(args.skip or [])


def cmd_info(args) -> int:
    from .info import summary

    model, _ = _load(args)
    print(json.dumps(summary(model), indent=2))
    return 0


def cmd_ask(args) -> int:
    from .generation import build_prompt, generate_text
    from .scaling import compact_info

    model, tok = _load(args)
    if tok is None:
        raise HopscotchError(f"{args.model} has no tokenizer; pass a model directory that includes one")
    info = compact_info(model)
    if info is not None:
        if args.skip or args.adapter:
            raise HopscotchError(f"{args.model} is a compact model; --skip/--adapter apply to an original model")
        import torch

        enc = tok(build_prompt(tok, args.prompt, not args.raw), return_tensors="pt").to(model.device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        print(f"--- compact model (attention removed from blocks {list(info.skipped)})\n{text}")
        return 0
    with _attach(model, args) as hs:  # validates --skip/--adapter before any generation
        skipped, scales = list(hs.skipped), hs.effective_scales()
    kw = dict(max_new_tokens=args.max_new_tokens, chat=not args.raw)
    print(f"--- original\n{generate_text(model, tok, args.prompt, **kw)}")
    print(f"--- skipped {skipped}\n{generate_text(model, tok, args.prompt, skipped, scales, **kw)}")
    return 0


def cmd_export(args) -> int:
    from .loading import save_model

    model, tok = _load(args)
    hs = _attach(model, args)
    if not hs.skipped:
        raise HopscotchError("nothing to export: give --skip and/or --adapter with skipped blocks")
    small = hs.compact(fold=not args.no_fold)
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in small.parameters())
    out = save_model(small, args.out, tokenizer=tok)
    print(f"wrote {out}: skipped {list(hs.skipped)}, {before:,} -> {after:,} parameters "
          f"({100 * (before - after) / before:.2f}% fewer)")
    return 0


def cmd_app(args) -> int:
    app = Path(__file__).resolve().parent.parent / "app.py"
    if not app.is_file():
        raise HopscotchError(f"app.py not found beside the package ({app}); run from a source checkout")
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", args.address,
           "--server.port", str(args.port), "--browser.gatherUsageStats", "false"]
    if args.headless:
        cmd += ["--server.headless", "true"]
    return subprocess.call(cmd)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hopscotch", description="Find and skip redundant attention blocks.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="architecture summary of a model")
    _model_args(s)
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("ask", help="answer one prompt with the original and the skipped model")
    _model_args(s)
    s.add_argument("--prompt", required=True)
    s.add_argument("--skip", type=_blocks, default=[], help="attention blocks to skip, e.g. 4,17")
    s.add_argument("--adapter", default=None, help="adapter directory (scales + skip set) to apply")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--raw", action="store_true", help="do not wrap the prompt in the chat template")
    s.set_defaults(func=cmd_ask)

    s = sub.add_parser("export", help="save a compact model without the skipped attention weights")
    _model_args(s)
    s.add_argument("--skip", type=_blocks, default=[], help="attention blocks to remove, e.g. 4,17")
    s.add_argument("--adapter", default=None, help="adapter directory (scales + skip set) to apply")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--no-fold", action="store_true", help="keep b_att/b_mlp as constants instead of in weights")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("app", help="launch the Streamlit app")
    s.add_argument("--port", type=int, default=8501)
    s.add_argument("--address", default="localhost")
    s.add_argument("--headless", action="store_true")
    s.set_defaults(func=cmd_app)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (HopscotchError, FileNotFoundError, ValueError, OSError) as e:
        if os.environ.get("HOPSCOTCH_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
