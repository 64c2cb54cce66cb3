"""The app's speed budget, measured in a real browser: `streamlit run app.py` on the embedded default model and
the bundled example runs, driven by Debian's chromium with Playwright.

    .venv/bin/python bench/bench_app.py                       # 3 launches, 5 rounds of everything else
    .venv/bin/python bench/bench_app.py --launches 1 --rounds 3 --json out.json
    .venv/bin/python bench/bench_app.py --smoke                 # the smallest setting (CI): one launch, one round

Needs the default model in the cache (`hopscotch info --model default` once) and /usr/bin/chromium. Measured in one
run, medians (min-max) over rounds:
- launch: `streamlit run` started -> Model page fully drawn (no script running, no spinner, every plotly chart
  drawn), a new server process each launch; "model in": until the sidebar's load line is gone and the page
  redrawn, then the script runs the page starts on its own in the next 3 s (settled: 0);
- Compare just opened: each launch then opens Compare and clicks "Generate side by side" as soon as the button is
  there, while the page's drift view is being computed: first token, tokens/s per side, click -> whole answer;
- page: a sidebar link clicked -> that page fully drawn (Selection, Scaling, Compare, Runs, Model in turn);
- toggle: a block clicked on the Compare page -> the script run it starts has finished and the page is fully drawn
  (a block never toggled before in that server; then clicked back, "toggle back"); figures computed in the
  background fill in later ("toggle -> drift view in", the per-layer MMD and drift figure of the new skip set);
- side by side: "Generate side by side" clicked -> the first streamed token on both sides, and tokens/s of each
  side from its first to its last token (token counts read from the page as they arrive), on the idle page (the
  drift view in) and right after toggling a block never seen (its drift view being computed);
- plain decode: tokens/s of greedy decoding of the same prompt by the same model with its KV cache, in this
  process before the server starts (same thread count as the server), the reference the sides are held to.
Goals (issue 10, P5): launch <= 5 s, page <= 1 s, first token <= 2 s, toggle <= 1 s, each side >= 0.8 x plain.
With --gguf (or --gguf-only: that scenario alone), the Compare page's llama.cpp section on the example run's blocks,
scaled: the export job once (clicked -> the generate button drawn), then per round "Generate: transformers vs
llama.cpp" clicked -> the first GGUF token shown, and each side's tokens/s (read from the page, and as the server
measured them: the page's caption); against plain llama.cpp decoding of the same file in this process after the
server has stopped (LlamaCpp, the same thread count as the page gives llama.cpp, the file's chat template): time to
first token (prompt evaluated) and tokens/s.
Run it on a quiet machine: another CPU job on 2 cores doubles every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers.appdriver import IDLE, AppServer, idle, launch_browser  # noqa: E402
from benchargs import smoke, smoke_flag  # noqa: E402

PAGES = ["Selection", "Scaling", "Compare", "Runs", "Model"]
HEADINGS = {"Model": "Hopscotch Studio"}  # a page's h1 when it is not the page's name
PROMPT = "Explain in two sentences why the sky is blue."
DRAWN = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-testid="stSpinner"]')) return false;
  return [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].every(e => e.querySelector('svg.main-svg'));
}"""
WATCH = """() => {
  window.__gen = [];
  const rec = () => window.__gen.push([performance.now(), ...[...document.querySelectorAll('SELECTOR')]
      .map(e => [Number(e.dataset.tokens), e.dataset.done])]);
  if (window.__obs) window.__obs.disconnect();
  window.__obs = new MutationObserver(rec);
  window.__obs.observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
  window.__t0 = performance.now();
}"""
PAIR = ".hopscotch-gen:not(.hopscotch-gguf .hopscotch-gen)"  # the transformers pair
GGUF_PAIR = ".hopscotch-gguf .hopscotch-gen"  # the llama.cpp section's pair


RUNS = """() => {
  window.__runs = [];
  const app = document.querySelector('[data-testid="stApp"]');
  if (window.__runObs) window.__runObs.disconnect();
  window.__runObs = new MutationObserver(() => window.__runs.push(app.getAttribute('data-test-script-state')));
  window.__runObs.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""
# The drift view of the current skip set is drawn: a visible figure (a set seen before keeps its figure in the
# page, hidden, so a bare selector would also match the previous set's).
FILLED = """() => !document.querySelector('[data-testid="stProgress"]')
  && [...document.querySelectorAll('[class*="st-key-cmp_drift_fig"] svg.main-svg')]
       .some(el => el.getBoundingClientRect().width > 0 && el.closest('[class*="st-key-cmp_drift_fig"]').offsetParent !== null)"""
RERAN = "() => window.__runs.includes('running') && window.__runs[window.__runs.length - 1] === 'notRunning'"
MODEL_IN = """() => !document.querySelector('[data-testid="stSidebar"] [data-testid="stProgress"]')
  && !document.querySelector('[data-testid="stSidebar"] [data-testid="stAlert"]')"""
GENERATE = 'button:has-text("Generate side by side"):not([disabled])'


def drawn(page, timeout: float = 300_000) -> None:
    page.wait_for_selector(IDLE, timeout=timeout)
    page.wait_for_function(DRAWN, timeout=timeout, polling=20)


def rerun_drawn(page, click, timeout: float = 300_000) -> None:
    """click(), then wait for the script run it starts to finish (watched on the app root: a run that ends
    before a plain idle check looks is not missed) and the page to be fully drawn."""
    page.evaluate(RUNS)
    click()
    page.wait_for_function(RERAN, timeout=timeout, polling=10)
    drawn(page, timeout)


def plain_decode(prompt: str, n: int, rounds: int) -> dict:
    """Greedy decode of `n` tokens with the KV cache, model('default') fp32, this process; tokens/s after the
    first token (prefill excluded), median over rounds."""
    import torch

    import hopscotch_core as hc
    from hopscotch_core.engine.cache import cache_kwarg
    from hopscotch_core.method.data import encode_prompt

    model, tok = hc.load_model("default")
    kw = cache_kwarg(model.forward)
    ids = torch.tensor([encode_prompt(tok, prompt, True)])
    rates = []
    with torch.no_grad():
        for _ in range(rounds + 1):
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            cache, nxt = getattr(out, kw), out.logits[0, -1].argmax().view(1, 1)
            t = time.perf_counter()
            for _ in range(n - 1):
                out = model(input_ids=nxt, use_cache=True, logits_to_keep=1, **{kw: cache})
                cache, nxt = getattr(out, kw), out.logits[0, -1].argmax().view(1, 1)
            rates.append((n - 1) / (time.perf_counter() - t))
    del model
    return {"tok_s": statistics.median(rates[1:]), "threads": torch.get_num_threads(), "tokens": n}


def plain_llamacpp(path: Path, prompt: str, n: int, rounds: int, threads: int) -> dict:
    """Greedy decode of up to `n` tokens of `prompt` (the file's chat template) with llama.cpp alone: seconds to the
    first token (prompt evaluated, fresh cache) and tokens/s after it, medians over rounds (a warm-up round first)."""
    from hopscotch_core.integrations.llamacpp import LlamaCpp

    firsts, rates = [], []
    with LlamaCpp(path, n_ctx=512, n_threads=threads) as lm:
        ids = lm.prompt_ids(prompt)
        for _ in range(rounds + 1):
            t, times = time.perf_counter(), []
            for _tok in lm.stream(ids, n):
                times.append(time.perf_counter())
            firsts.append(times[0] - t)
            rates.append((len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan"))
    return {"first_token_s": statistics.median(firsts[1:]), "tok_s": statistics.median(rates[1:]),
            "tokens": len(times), "threads": threads}


SERVER_NOTE = re.compile(r"transformers: first token ([\d.]+) s, ([\d.]+) tok/s.*llama\.cpp: first token ([\d.]+) s, "
                         r"([\d.]+) tok/s.*GGUF loaded in ([\d.]+) s")


def gguf_rounds(page, rounds: int, res: dict) -> Path:
    """The Compare page's llama.cpp section: export once (timed), then `rounds` generations; returns the file."""
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.keyboard.press("Control+Enter")
    idle(page)
    export = page.get_by_role("button", name="Export the GGUF for this set")
    go = page.get_by_role("button", name="Generate: transformers vs llama.cpp")
    if export.count():
        t = time.perf_counter()
        export.first.click()
        go.first.wait_for(timeout=900_000)
        res["gguf_export"].append(time.perf_counter() - t)
        print(f"gguf export job: {res['gguf_export'][-1]:.1f} s", flush=True)
        idle(page)
    path = Path(re.search(r"File (\S+\.gguf)", page.locator("text=/reused for this model/").first.inner_text()).group(1))
    for r in range(rounds):
        page.evaluate(WATCH.replace("SELECTOR", GGUF_PAIR))
        go.first.click()
        page.wait_for_selector(".hopscotch-gguf .hopscotch-gen[data-done='0']", timeout=120_000)
        drawn(page)
        page.wait_for_timeout(200)
        got = side_rates(page.evaluate("window.__gen"), page.evaluate("window.__t0"), ("original", "gguf"))
        note = page.locator("text=/GGUF loaded in/").last.inner_text()
        m = SERVER_NOTE.search(note)
        if m:
            got.update(zip(("server_original_first_s", "server_original_tok_s", "server_gguf_first_s",
                            "server_gguf_tok_s", "server_load_s"), map(float, m.groups())))
        for k, v in got.items():
            res.setdefault(f"gguf_{k}", []).append(v)
        print(f"llama.cpp side by side {r}: {json.dumps({k: round(v, 3) for k, v in got.items()})}", flush=True)
    return path


def side_rates(records: list, t0: float, names: tuple[str, str] = ("original", "modified")) -> dict:
    """From the page's (time, [tokens, done] per side) records after a click at t0: the first-token latency
    (both sides shown with >= 1 token of the new generation) and each side's tokens/s."""
    fresh = []
    started = False
    for rec in records:
        t, sides = rec[0], rec[1:]
        if len(sides) < 2:
            continue
        if not started and any(d == "0" for _, d in sides):
            started = True  # the first render of this generation (the previous answer had data-done 1)
        if started:
            fresh.append((t, [n for n, _ in sides]))
    first = next(t for t, ns in fresh if min(ns) >= 1)
    out = {"first_token_s": (first - t0) / 1000}
    for i, name in enumerate(names):
        final = fresh[-1][1][i]
        t_first = next(t for t, ns in fresh if ns[i] >= 1)
        t_last = next(t for t, ns in fresh if ns[i] >= final)
        out[f"{name}_tokens"] = final
        out[f"{name}_tok_s"] = (final - 1) / ((t_last - t_first) / 1000) if final > 1 and t_last > t_first \
            else float("nan")
    return out


def generate(page) -> dict:
    """Click "Generate side by side" now; wait for the generation's end; side_rates plus total_s (click -> the
    last token on both sides)."""
    page.evaluate(WATCH.replace("SELECTOR", PAIR))
    page.locator(GENERATE).click()
    page.wait_for_selector(".hopscotch-gen[data-done='0']", timeout=300_000)
    page.wait_for_selector(IDLE, timeout=300_000)  # the script run that streams ends with the generation
    page.wait_for_timeout(200)
    records, t0 = page.evaluate("window.__gen"), page.evaluate("window.__t0")
    got = side_rates(records, t0)
    started = False
    for rec in records:  # the first record after the click with both sides marked done
        sides = rec[1:]
        started = started or (len(sides) >= 2 and any(d == "0" for _, d in sides))
        if started and len(sides) >= 2 and all(d == "1" for _, d in sides):
            got["total_s"] = (rec[0] - t0) / 1000
            break
    return got


def quiet_reruns(page, seconds: float) -> int:
    """Script runs (full or fragment) the page starts on its own within `seconds` of now."""
    page.evaluate(RUNS)
    page.wait_for_timeout(int(seconds * 1000))
    return sum(1 for s in page.evaluate("window.__runs") if s == "running")


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})" if xs else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--launches", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32, help="side-by-side max new tokens (the page's default)")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw timings here")
    ap.add_argument("--gguf", action="store_true", help="also measure the Compare page's llama.cpp side by side "
                    "(export job once, then first token and tokens/s against plain llama.cpp decoding)")
    ap.add_argument("--gguf-only", action="store_true", help="only that scenario (one launch, no page rounds)")
    ap.add_argument("--gguf-quant", default="q8_0", choices=["f32", "f16", "q8_0"], help="the GGUF's weight type")
    smoke_flag(ap, "one launch, one round; no page switches, no generation right after a toggle")
    args = smoke(ap.parse_args(), launches=1, rounds=1)
    from playwright.sync_api import sync_playwright

    args.gguf = args.gguf or args.gguf_only
    if args.gguf_only:
        args.launches = 1
    plain = plain_decode(PROMPT, args.tokens, args.rounds) if not args.gguf_only else {"tok_s": float("nan"),
                                                                                       "threads": 0}
    print(f"plain decode: {plain['tok_s']:.1f} tok/s ({plain['threads']} threads)", flush=True)
    res: dict[str, list] = {"launch": [], "model_in": [], "reruns_settled": [], "page": [], "toggle": [],
                            "toggle_back": [], "toggle_back_run": [], "drift_in": [], "first_token": [],
                            "original_tok_s": [], "modified_tok_s": [], "total": [],
                            "open_first_token": [], "open_original_tok_s": [], "open_modified_tok_s": [],
                            "open_total": [], "toggle_first_token": [], "toggle_original_tok_s": [],
                            "toggle_modified_tok_s": [], "toggle_total": [], "gguf_export": []}
    gguf_path = None
    per_page: dict[str, list] = {p: [] for p in PAGES}
    tmp = Path(tempfile.mkdtemp(prefix="bench-app-"))
    env = {"HOPSCOTCH_MODEL": "default", "HOPSCOTCH_EXAMPLES": str(ROOT / "assets"), "HOPSCOTCH_RUNS": str(tmp / "runs")}
    with sync_playwright() as p:
        browser = launch_browser(p)
        try:
            for launch in range(args.launches):
                t0 = time.perf_counter()
                app = AppServer(env, tmp / f"streamlit-{launch}.log")
                try:
                    page = browser.new_page(viewport={"width": 1360, "height": 900})
                    page.goto(app.url)
                    page.wait_for_selector('[data-testid="stPlotlyChart"]', timeout=300_000)
                    drawn(page)
                    res["launch"].append(time.perf_counter() - t0)
                    page.wait_for_function(MODEL_IN, timeout=300_000, polling=50)
                    drawn(page)
                    res["model_in"].append(time.perf_counter() - t0)
                    res["reruns_settled"].append(quiet_reruns(page, 3.0))
                    print(f"launch {launch}: {res['launch'][-1]:.2f} s, model in {res['model_in'][-1]:.2f} s, "
                          f"{res['reruns_settled'][-1]} script runs in the 3 s after", flush=True)
                    # a user who opens Compare and clicks Generate at once, while its drift view is computed
                    page.locator('[data-testid="stSidebarNavLink"]', has_text="Compare").click()
                    page.wait_for_selector(GENERATE, timeout=300_000)
                    page.get_by_label("Prompt", exact=True).fill(PROMPT)
                    page.keyboard.press("Control+Enter")
                    idle(page)
                    computing = page.locator('[data-testid="stProgress"]').count() > 0
                    got = generate(page)
                    for k in ("first_token", "original_tok_s", "modified_tok_s"):
                        res[f"open_{k}"].append(got[k if k != "first_token" else "first_token_s"])
                    res["open_total"].append(got["total_s"])
                    print(f"open Compare, generate at once (drift view computing: {computing}): "
                          f"{json.dumps({k: round(v, 3) for k, v in got.items()})}", flush=True)
                    if launch < args.launches - 1:
                        page.close()
                        continue
                    for r in range(0 if (args.smoke or args.gguf_only) else args.rounds):  # (--smoke: no page switches)
                        for title in PAGES:
                            link = page.locator('[data-testid="stSidebarNavLink"]', has_text=title)
                            t = time.perf_counter()
                            rerun_drawn(page, link.click)
                            page.wait_for_selector(f'h1:has-text("{HEADINGS.get(title, title)}")', timeout=60_000)
                            per_page[title].append(time.perf_counter() - t)
                            res["page"].append(per_page[title][-1])
                    page.locator('[data-testid="stSidebarNavLink"]', has_text="Compare").click()
                    page.wait_for_selector('h1:has-text("Compare")')
                    drawn(page)
                    skipped = page.locator('[data-testid="stButtonGroup"] button[aria-pressed="true"]')
                    print(f"compare page: blocks {skipped.all_inner_texts()} skipped", flush=True)
                    page.wait_for_function(FILLED, timeout=300_000, polling=20)  # the drift view is in
                    drawn(page)
                    if args.gguf:
                        page.get_by_label("Prompt", exact=True).fill(PROMPT)
                        page.keyboard.press("Control+Enter")
                        idle(page)
                        if args.gguf_quant != "q8_0":  # q8_0 is selected already (a click would unselect it)
                            page.locator(f'.st-key-cmp_gguf_quant button:has-text("{args.gguf_quant}")').click()
                            idle(page)
                        gguf_path = gguf_rounds(page, args.rounds, res)
                    for r in range(0 if args.gguf_only else args.rounds):  # the page idle: nothing computing beside
                        got = generate(page)                                # the generation
                        drawn(page)
                        for k in ("original_tok_s", "modified_tok_s"):
                            res[k].append(got[k])
                        res["first_token"].append(got["first_token_s"])
                        res["total"].append(got["total_s"])
                        print(f"side by side {r}: {json.dumps({k: round(v, 3) for k, v in got.items()})}", flush=True)
                    free = page.locator('[data-testid="stButtonGroup"] button[aria-pressed="false"]')
                    for r, block in enumerate(free.all_inner_texts()[:0 if args.gguf_only else args.rounds]):
                        pill = page.locator('[data-testid="stButtonGroup"] button',
                                            has_text=re.compile(rf"^{block.strip()}$"))
                        for key, now in (("toggle", "true"), ("toggle_back", "false")):
                            t = time.perf_counter()
                            page.evaluate(RUNS)
                            pill.click()
                            page.wait_for_function(RERAN, timeout=300_000, polling=10)
                            if key == "toggle_back":
                                res["toggle_back_run"].append(time.perf_counter() - t)
                            drawn(page)
                            page.wait_for_selector(f'[data-testid="stButtonGroup"] button[aria-pressed="{now}"]'
                                                   f' >> text=/^{block.strip()}$/', timeout=60_000)
                            res[key].append(time.perf_counter() - t)
                            if key == "toggle":
                                page.wait_for_function(FILLED, timeout=300_000, polling=20)
                                drawn(page)
                                res["drift_in"].append(time.perf_counter() - t)
                        print(f"toggle {r}: {res['toggle'][-1]:.2f} s (drift view in {res['drift_in'][-1]:.2f} s), back "
                              f"{res['toggle_back'][-1]:.2f} s", flush=True)
                    # generate right after toggling a block never seen: its drift view is being computed
                    fresh = page.locator('[data-testid="stButtonGroup"] button[aria-pressed="false"]')
                    for r, block in enumerate(fresh.all_inner_texts()[args.rounds:2 * args.rounds]
                                              if not (args.smoke or args.gguf_only) else []):
                        pill = page.locator('[data-testid="stButtonGroup"] button',
                                            has_text=re.compile(rf"^{block.strip()}$"))
                        rerun_drawn(page, pill.click)
                        got = generate(page)
                        for k in ("first_token", "original_tok_s", "modified_tok_s"):
                            res[f"toggle_{k}"].append(got[k if k != "first_token" else "first_token_s"])
                        res["toggle_total"].append(got["total_s"])
                        print(f"toggle, generate at once {r}: {json.dumps({k: round(v, 3) for k, v in got.items()})}",
                              flush=True)
                finally:
                    app.close()
        finally:
            browser.close()
    goals = {"launch": ("launch -> Model page drawn (s)", 5.0, "<="),
             "model_in": ("launch -> model loaded, page redrawn (s)", float("nan"), ""),
             "reruns_settled": ("script runs in the 3 s after the model is in", 0, "="),
             "page": ("page switch (s)", 1.0, "<="),
             "first_token": ("idle page: click -> first token both sides (s)", 2.0, "<="),
             "total": (f"idle page: click -> {args.tokens} tokens both sides (s)", float("nan"), ""),
             "open_first_token": ("Compare just opened: click -> first token (s)", 2.0, "<="),
             "open_total": (f"Compare just opened: click -> {args.tokens} tokens (s)", float("nan"), ""),
             "toggle_first_token": ("block just toggled: click -> first token (s)", 2.0, "<="),
             "toggle_total": (f"block just toggled: click -> {args.tokens} tokens (s)", float("nan"), ""),
             "toggle": ("toggle a block -> page drawn (s)", 1.0, "<="),
             "toggle_back": ("toggle it back -> page drawn (s)", 1.0, "<="),
             "toggle_back_run": ("toggle it back -> script run done (s)", float("nan"), ""),
             "drift_in": ("toggle -> drift view of the new set in (s)", float("nan"), "")}
    print("\n| measure | median (min-max) | goal |\n|---|---|---|")
    for key, (label, goal, op) in goals.items():
        print(f"| {label} | {med(res[key])} | {f'{op} {goal}' if op else ''} |")
    for title in PAGES:
        print(f"| &nbsp; page {title} (s) | {med(per_page[title])} | |")
    for prefix, when in (("", "idle page"), ("open_", "Compare just opened"), ("toggle_", "block just toggled")):
        for side in ("original", "modified"):
            rates = res[f"{prefix}{side}_tok_s"]
            ratio = [r / plain["tok_s"] for r in rates]
            print(f"| {when}: side by side, {side} (tok/s; x plain {plain['tok_s']:.1f}) | {med(rates)}; "
                  f"x {med(ratio)} | >= 0.8 x |")
    print(f"plain decode of {args.tokens} tokens: {(args.tokens - 1) / plain['tok_s']:.2f} s after the first; "
          f"load average (1/5/15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if gguf_path is not None:  # the server is gone: llama.cpp alone on the same file, the page's thread count
        import torch

        cpp = plain_llamacpp(gguf_path, PROMPT, args.tokens, args.rounds, max(1, torch.get_num_threads() // 2))
        print(f"\nplain llama.cpp decode of {gguf_path.name}: first token {cpp['first_token_s']:.3f} s, "
              f"{cpp['tok_s']:.1f} tok/s ({cpp['threads']} thread(s), {cpp['tokens']} tokens)")
        print("\n| llama.cpp side by side | median (min-max) | x plain llama.cpp |\n|---|---|---|")
        for key, label, ref in (("gguf_first_token_s", "click -> first GGUF token shown (s)", cpp["first_token_s"]),
                                ("gguf_server_gguf_first_s", "start -> first GGUF token, server (s)",
                                 cpp["first_token_s"]),
                                ("gguf_server_load_s", "GGUF load per generation, server (s)", None),
                                ("gguf_gguf_tok_s", "GGUF side tok/s, page", cpp["tok_s"]),
                                ("gguf_server_gguf_tok_s", "GGUF side tok/s, server", cpp["tok_s"]),
                                ("gguf_original_tok_s", "transformers side tok/s, page", None),
                                ("gguf_server_original_tok_s", "transformers side tok/s, server", None)):
            xs = res.get(key) or []
            print(f"| {label} | {med(xs)} | {med([x / ref for x in xs]) if ref else ''} |")
        print(f"| export job, click -> file in (s) | {med(res['gguf_export'])} | |")
        res["plain_llamacpp"] = [cpp]
    if args.json:
        args.json.write_text(json.dumps({"plain": plain, "results": res, "pages": per_page}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
