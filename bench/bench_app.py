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
Run it on a quiet machine: another CPU job on 2 cores doubles every figure.
"""

from __future__ import annotations

import argparse
import inspect
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
  const rec = () => window.__gen.push([performance.now(), ...[...document.querySelectorAll('.hopscotch-gen')]
      .map(e => [Number(e.dataset.tokens), e.dataset.done])]);
  if (window.__obs) window.__obs.disconnect();
  window.__obs = new MutationObserver(rec);
  window.__obs.observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
  window.__t0 = performance.now();
}"""


RUNS = """() => {
  window.__runs = [];
  const app = document.querySelector('[data-testid="stApp"]');
  if (window.__runObs) window.__runObs.disconnect();
  window.__runObs = new MutationObserver(() => window.__runs.push(app.getAttribute('data-test-script-state')));
  window.__runObs.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""
FILLED = """() => !document.querySelector('[data-testid="stProgress"]')
  && !!document.querySelector('[class*="st-key-cmp_drift_fig"] svg.main-svg')"""
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
    from hopscotch_core.method.data import encode_prompt

    model, tok = hc.load_model("default")
    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
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


def side_rates(records: list, t0: float) -> dict:
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
    for i, name in enumerate(("original", "modified")):
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
    page.evaluate(WATCH)
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
    smoke_flag(ap, "one launch, one round; no page switches, no generation right after a toggle")
    args = smoke(ap.parse_args(), launches=1, rounds=1)
    from playwright.sync_api import sync_playwright

    plain = plain_decode(PROMPT, args.tokens, args.rounds)
    print(f"plain decode: {plain['tok_s']:.1f} tok/s ({plain['threads']} threads)", flush=True)
    res: dict[str, list] = {"launch": [], "model_in": [], "reruns_settled": [], "page": [], "toggle": [],
                            "toggle_back": [], "toggle_back_run": [], "drift_in": [], "first_token": [],
                            "original_tok_s": [], "modified_tok_s": [], "total": [],
                            "open_first_token": [], "open_original_tok_s": [], "open_modified_tok_s": [],
                            "open_total": [], "toggle_first_token": [], "toggle_original_tok_s": [],
                            "toggle_modified_tok_s": [], "toggle_total": []}
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
                    for r in range(0 if args.smoke else args.rounds):  # (--smoke: no page switches)
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
                    for r in range(args.rounds):  # the page idle: nothing computing beside the generation
                        got = generate(page)
                        drawn(page)
                        for k in ("original_tok_s", "modified_tok_s"):
                            res[k].append(got[k])
                        res["first_token"].append(got["first_token_s"])
                        res["total"].append(got["total_s"])
                        print(f"side by side {r}: {json.dumps({k: round(v, 3) for k, v in got.items()})}", flush=True)
                    free = page.locator('[data-testid="stButtonGroup"] button[aria-pressed="false"]')
                    for r, block in enumerate(free.all_inner_texts()[:args.rounds]):
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
                    for r, block in enumerate(fresh.all_inner_texts()[args.rounds:2 * args.rounds] if not args.smoke
                                              else []):
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
    if args.json:
        args.json.write_text(json.dumps({"plain": plain, "results": res, "pages": per_page}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
