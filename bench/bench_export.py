"""Memory and time of an export: peak RSS and wall time of hc.export for hf and GGUF f16 / q8_0.

    .venv/bin/python bench/bench_export.py                         # Llama-3.2-1B-shaped random model + embedded
    .venv/bin/python bench/bench_export.py --models default --formats hf,gguf:q8_0    # smaller, faster
    .venv/bin/python bench/bench_export.py --smoke                 # the smallest setting (CI): seconds
    .venv/bin/python bench/bench_export.py --models llama-1b --formats gguf:f16 --release-source   # as the CLI runs

Every export runs in a fresh process (`--one` below), so each figure is that export alone. The process builds or
loads the source model, resets the kernel's peak-RSS counter (/proc/self/clear_refs), runs hc.export (fold, write,
and the logit check, which for GGUF loads the file in llama.cpp), and reports:

    model MB        the source model's weights in its dtype (the budget's unit)
    peak RSS MB     the peak of the whole process tree: the largest of the process's VmHWM after the export
                    and the sampled sum of its and its children's RSS (the check runs in-process today, so
                    it is VmHWM); every resident page, including the GGUF file llama.cpp maps for the check
                    (file-backed pages, which the kernel can drop under pressure)
    peak anon MB    the largest anonymous resident memory (RssAnon) seen by a 20 ms sampler: what cannot be dropped
    budget MB       1.5 x model + 1024, the bound the export is built to stay within
    wall s          hc.export's wall time

`--release-source` exports as the CLI does (`hopscotch export`, the app's export jobs): the source model is the
command's own, so its weights are freed once the GGUF is written, before llama.cpp loads the file for the check.

Models: `llama-1b`: Llama-3.2-1B's config (16 layers, hidden 2048, 32/8 heads, vocab 128,256, tied embeddings,
llama3 RoPE) with random weights in bf16 as that model ships (--dtype float32 for fp32); 4 attention blocks skipped with random scalars.
Its tokenizer is a byte-level BPE with Llama 3's pre-tokenizer and four merges (no real tokenizer is reachable
offline; the file's vocabulary is padded to the embedding's rows). `default`: the embedded SmolLM2-135M (fp32),
the k = 7 example run's trained scalars. `tiny`: a 4-layer random Llama (CI). Use threads <= free cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
                rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192})
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _status(key: str) -> int:
    """A /proc/self/status field in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    return -1


def _tree_rss() -> int:
    """RSS in MB of this process and all its descendants."""
    total, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            pass  # gone meanwhile
    return total // 1024


def byte_tokenizer():
    """A byte-level BPE tokenizer with Llama 3's pre-tokenizer: 256 byte tokens, no merges, two specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġ", "a"), ("i", "n")]  # llama.cpp refuses a BPE file without merges
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk)
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"})
    return tok


def source(name: str, dtype_name: str = "bfloat16"):
    """(Hopscotch handle, tokenizer) of a benchmark model (`dtype_name`: the random 1B model's weight type)."""
    import torch
    import transformers

    import hopscotch_core as hc

    if name == "default":
        model, tok = hc.load_model("default", device="cpu")
        return hc.load_adapter(model, ROOT / "assets" / "example-run" / "adapter"), tok
    torch.manual_seed(0)
    if name == "llama-1b":
        cfg, dtype = transformers.LlamaConfig(**LLAMA_1B), getattr(torch, dtype_name)
    else:
        cfg = transformers.LlamaConfig(**{**LLAMA_1B, "hidden_size": 64, "intermediate_size": 128,
                                          "num_hidden_layers": 4, "num_attention_heads": 4,
                                          "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512,
                                          "bos_token_id": 260, "eos_token_id": 261})
        dtype = torch.float32
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    hs = hc.attach(model).skip([1, 3, 6, 9] if name == "llama-1b" else [1])
    scales = 1 + 0.05 * torch.randn(hs.num_layers, 4, generator=torch.Generator().manual_seed(1))
    hs.set_scales(scales)
    return hs, byte_tokenizer()


def one(name: str, fmt: str, out: Path, threads: int, dtype_name: str, release: bool = False) -> dict:
    """Run one export in this process and return its figures."""
    import torch

    from hopscotch_core.integrations.export import export, read_export

    torch.set_num_threads(threads)
    hs, tok = source(name, dtype_name)
    model_mb = sum(p.numel() * p.element_size() for p in hs.model.parameters()) / 2 ** 20
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    before, peak_anon, peak_tree, stop = _status("VmRSS"), [0], [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak_anon[0] = max(peak_anon[0], _status("RssAnon"))
            peak_tree[0] = max(peak_tree[0], _tree_rss())
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    kind, _, quant = fmt.partition(":")
    t0 = time.perf_counter()
    params = sum(p.numel() for p in hs.model.parameters())
    export(hs, out, format=kind, quant=quant or None, tokenizer=tok, release_source=release)
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    rec = read_export(out)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2 ** 20
    return {"model": name, "format": fmt, "params": params, "release_source": release,
            "dtype": str(next(hs.model.parameters()).dtype).removeprefix("torch."), "model_mb": round(model_mb),
            "rss_before_mb": before, "peak_rss_mb": max(_status("VmHWM"), peak_tree[0]),
            "peak_anon_mb": peak_anon[0],
            "budget_mb": round(1.5 * model_mb + 1024), "wall_s": round(wall, 1), "out_mb": round(size),
            **{key: (rec.get("check") or {}).get(field) for key, field in (
                ("check_rel", "rel_diff"), ("greedy", "greedy_agree"), ("check_floor", "rounding_floor"),
                ("check_limit", "limit"), ("floor_s", "floor_s"))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="llama-1b,default", help="llama-1b, default, tiny (comma-separated)")
    ap.add_argument("--formats", default="hf,gguf:f16,gguf:q8_0", help="hf, compact, gguf:QUANT (comma-separated)")
    ap.add_argument("--threads", type=int, default=1, help="torch and llama.cpp threads (<= free cores)")
    ap.add_argument("--dtype", default="bfloat16", help="weight type of the random llama-1b (bfloat16, float32)")
    ap.add_argument("--release-source", action="store_true",
                    help="free the source model's weights before the GGUF check, as the CLI does")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "FORMAT", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--smoke", action="store_true", help="the smallest setting (CI): --models tiny --formats "
                    "hf,gguf:q8_0")
    args = ap.parse_args()
    if args.smoke:
        args.models, args.formats = "tiny", "hf,gguf:q8_0"
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], Path(args.one[2]), args.threads, args.dtype,
                             args.release_source)))
        return
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    print("| model | params | dtype | model MB | format | peak RSS MB | peak anon MB | budget MB | wall s | "
          "file MB | check rel | floor | limit | greedy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for fmt in args.formats.split(","):
            with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
                res = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--dtype", args.dtype,
                                      *(["--release-source"] if args.release_source else []), "--one", name, fmt,
                                      str(Path(tmp) / "out")], capture_output=True, text=True, env=env)
            if res.returncode:
                print(f"| {name} | {fmt} | failed: {res.stderr.strip().splitlines()[-1:]} |")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(r)
            rel, floor, limit = (f"{r[k]:.1e}" if r[k] is not None else "-"
                                 for k in ("check_rel", "check_floor", "check_limit"))
            print(f"| {name} | {r['params'] / 1e6:,.1f} M | {r['dtype']} | {r['model_mb']} | {fmt} | "
                  f"{r['peak_rss_mb']} | {r['peak_anon_mb']} | {r['budget_mb']} | {r['wall_s']} | {r['out_mb']} | "
                  f"{rel} | {floor} | {limit} | {r['greedy']} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
