"""Prompts -> the model's own greedy answers -> response-only labels -> padding-free packed rows.

    from hopscotch_core.method import data
    records = data.load_prompts("gsm8k")                         # bundled GSM8K test problems (1,319)
    calib, held = data.split_indices(len(records), 32, 16, seed=0)
    answers = data.generate_answers(model, tok, [records[i]["prompt"] for i in calib], max_new_tokens=96)
    rows = data.pack(data.build_examples(answers), batch_tokens=1024)
    loss_sum, n_tokens = data.row_loss(model, rows[0])

Packing: examples are laid end to end in one row whose position_ids restart at 0 for each example; with no
attention mask and no cache, transformers turns that into a block-diagonal causal mask, so examples never attend
to each other (tests check packed loss == per-example losses). A row holds at most `batch_tokens` tokens, and one
row is one optimisation step; an example longer than that gets a row of its own.
"""

from __future__ import annotations

import csv
import importlib.metadata
import itertools
import json
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..engine.generation import encode_prompt, eos_ids  # noqa: F401 - the tokenizer helpers, importable here as before
from .datafiles import GSM8K_FILE, GSM8K_PACKAGE, gsm8k_path, gsm8k_records  # noqa: F401 - importable here
from ..errors import DataError, HopscotchError  # noqa: F401 - DataError importable from here as before

DEFAULT_COLUMNS = ("question", "prompt", "instruction", "input", "text")

Progress = Callable[[int, int, dict], None]


# --------------------------------------------------------------------------------------------------- prompts
def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]] = []
    try:
        if suffix in (".jsonl", ".ndjson"):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}, line {n}: expected a JSON object, got {type(obj).__name__}")
                rows.append(obj)
        elif suffix == ".json":
            try:
                obj = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
            if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
                raise DataError(f"{path}: expected a JSON list of objects")
            rows = obj
        elif suffix in (".csv", ".tsv"):
            with path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        else:
            raise DataError(f"{path}: unknown data format '{suffix}'; use .jsonl, .json or .csv")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    if not rows:
        raise DataError(f"{path} holds no records")
    return rows


def _load_hf(spec: str) -> list[dict[str, Any]]:
    name, _, split = spec.partition(":")
    try:
        import datasets  # optional dependency
    except ImportError:
        raise DataError("Hugging Face datasets need the `datasets` package (pip install datasets), and network "
                        "access; offline, export the dataset to JSONL and pass the file") from None
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; all mean "not available"
        raise DataError(f"could not load Hugging Face dataset '{name}' ({type(e).__name__}: {e}); offline, "
                        "export it to JSONL elsewhere and pass the file") from None
    return [dict(r) for r in ds]


def load_prompts(source: str | Path, column: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Records {"prompt": str, "answer": str | None} from 'gsm8k', 'mix', 'hf:NAME[:SPLIT]', or a .jsonl/.json/.csv
    file ('mix': the general prompt mix of prompt_sets.py, its records with a "source" too).

    `column` names the prompt field; by default the first of question/prompt/instruction/input/text present.
    """
    src = str(source)
    if src == "mix":
        from . import prompt_sets

        return prompt_sets.load_mix(column, limit)
    if src == "gsm8k" and column in (None, "question"):
        return gsm8k_records()[:limit]
    if src == "gsm8k":
        rows = _read_rows(gsm8k_path())
    elif src.startswith("hf:"):
        rows = _load_hf(src[3:])
    else:
        rows = _read_rows(Path(src).expanduser())
    keys = set().union(*(r.keys() for r in rows[:50]))
    if column is None:
        column = next((c for c in DEFAULT_COLUMNS if c in keys), None)
        if column is None:
            raise DataError(f"{src}: no prompt column found; name one with --column (columns: {sorted(keys)})")
    elif column not in keys:
        raise DataError(f"{src}: no column '{column}' (columns: {sorted(keys)})")
    out = []
    for n, r in enumerate(rows):
        text = r.get(column)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{src}: record {n} has an empty or non-text '{column}'")
        ans = r.get("answer")
        out.append({"prompt": text, "answer": ans if isinstance(ans, str) else None})
        if limit is not None and len(out) >= limit:
            break
    return out


def split_indices(n: int, n_calib: int, n_eval: int, seed: int) -> tuple[list[int], list[int]]:
    """A seeded, disjoint choice of calibration and held-out indices out of range(n)."""
    if n_calib < 1 or n_eval < 0:
        raise DataError("need at least 1 calibration prompt and a non-negative number of held-out prompts")
    if n_calib + n_eval > n:
        raise DataError(f"asked for {n_calib} calibration + {n_eval} held-out prompts, but the data has only {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[:n_calib]), sorted(order[n_calib:n_calib + n_eval])


def extra_indices(n: int, n_calib: int, n_eval: int, n_extra: int, seed: int) -> list[int]:
    """`n_extra` more training indices out of range(n), disjoint from split_indices(n, n_calib, n_eval, seed)'s
    two sets and drawn from the same seeded order after them: a larger n_extra adds prompts, never changes the
    calibration, held-out or earlier extra ones."""
    if n_extra < 0:
        raise DataError("the number of extra training prompts cannot be negative")
    if n_calib + n_eval + n_extra > n:
        raise DataError(f"asked for {n_calib} calibration + {n_extra} more training + {n_eval} held-out prompts, "
                        f"but the data has only {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[n_calib + n_eval:n_calib + n_eval + n_extra])


# --------------------------------------------------------------------------------------------------- answers
@dataclass
class Answer:
    """The model's greedy answer to one prompt, as token ids."""

    index: int                # position in the list of prompts it answers
    prompt_ids: list[int]
    response_ids: list[int]   # generated tokens up to and including the first EOS
    finished: bool            # False when max_new_tokens cut it off

    def to_json(self) -> dict:
        return {"index": self.index, "prompt_ids": self.prompt_ids, "response_ids": self.response_ids,
                "finished": self.finished}

    @classmethod
    def from_json(cls, d: dict) -> Answer:
        return cls(int(d["index"]), list(d["prompt_ids"]), list(d["response_ids"]), bool(d["finished"]))


class AnswerCache:
    """The original model's greedy answers shared by every run of one model: cache_dir()/answers/KEY.jsonl (or
    $HOPSCOTCH_ANSWERS_DIR/KEY.jsonl), KEY
    from the model's identity (config hash and weights fingerprint), dtype, device kind, answer length and chat
    template, one line per prompt (its text's SHA-256 and the answer). A later run of the same model and data
    reads the answers instead of generating them again. Best effort: a cache that cannot be read or written is
    treated as empty (a run never fails for it); a torn or damaged line is skipped."""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def for_model(cls, model, tok, max_new_tokens: int, chat: bool = True) -> "AnswerCache":
        import hashlib

        from ..engine.artifacts import model_identity
        from ..engine.stamps import cache_dir

        ident = model_identity(model)
        key = [ident["config_hash"], [round(v, 5) for v in ident["fingerprint"]], str(model.dtype),
               model.device.type, int(max_new_tokens), bool(chat), getattr(tok, "chat_template", None) or ""]
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]
        root = os.environ.get("HOPSCOTCH_ANSWERS_DIR") or cache_dir() / "answers"
        return cls(Path(root) / f"{digest}.jsonl")

    @staticmethod
    def prompt_key(prompt: str) -> str:
        import hashlib

        return hashlib.sha256(prompt.encode("utf-8")).hexdigest()

    def _read(self) -> dict[str, dict]:
        out = {}
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return out
        for line in lines:
            try:
                d = json.loads(line)
                out[d["prompt_sha"]] = d
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        return out

    def lookup(self, prompts: dict[int, str]) -> list[Answer]:
        """Answers to those of `prompts` ({index: text}) the cache holds, each with its index."""
        known = self._read()
        out = []
        for i, p in prompts.items():
            d = known.get(self.prompt_key(p))
            if d is not None:
                try:
                    out.append(Answer.from_json({**d, "index": i}))
                except (KeyError, TypeError, ValueError):
                    continue
        return sorted(out, key=lambda a: a.index)

    def add(self, items: Iterable[tuple[str, Answer]]) -> None:
        """Keep (prompt text, answer) pairs; errors are ignored (a read-only cache folder)."""
        text = "".join(json.dumps({"prompt_sha": self.prompt_key(p), **{k: v for k, v in a.to_json().items()
                                                                        if k != "index"}}) + "\n"
                       for p, a in items)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a+", encoding="utf-8") as f:
                f.seek(0, 2)
                if f.tell():  # start on a fresh line after a torn last one
                    f.seek(f.tell() - 1)
                    if f.read(1) != "\n":
                        text = "\n" + text
                f.write(text)
        except OSError:
            pass


def generate_answers(
    model,
    tok,
    prompts: Sequence[str],
    max_new_tokens: int = 96,
    batch_size: int = 8,
    chat: bool = True,
    skip: Iterable[int] = (),
    on_batch: Callable[[list[Answer]], None] | None = None,
    on_progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    group=None,
) -> list[Answer]:
    """Greedy answers to `prompts` (indices in `skip` are already done), batched by length with left padding.

    `on_batch` receives each finished batch (the run store appends it to disk), so an interrupted generation
    resumes where it stopped. Returns the answers generated by this call, in prompt order.

    With a process `group` (distributed.Group) of N ranks, the same batches are made as in one process and
    batch j is generated by rank j % N; each step's batches are gathered on every rank, so every rank returns
    all the answers, equal to one process's (whole batches, so padding and batch composition do not change).
    """
    eos = eos_ids(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos), 0)
    done = set(skip)
    todo = [(i, encode_prompt(tok, p, chat)) for i, p in enumerate(prompts) if i not in done]
    todo.sort(key=lambda t: (len(t[1]), t[0]))  # similar lengths together: less padding
    batches = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
    out: list[Answer] = []
    total = len(todo)
    world = 1 if group is None else group.world

    def one(j: int) -> list[Answer]:
        return _generate_batch(model, batches[j], max_new_tokens, pad, eos)

    def got(j: int, batch: list[Answer]) -> None:
        out.extend(batch)
        if on_batch is not None:
            on_batch(batch)
        if on_progress is not None:
            on_progress(min((j + 1) * batch_size, total), total, {"stage": "generate"})

    if world == 1:
        for j in range(len(batches)):
            if should_stop is not None and should_stop():
                break
            got(j, one(j))
    else:
        group.shard_map(range(len(batches)), one, got, should_stop)
    return sorted(out, key=lambda a: a.index)


def _generate_batch(model, chunk: list[tuple[int, list[int]]], max_new_tokens: int, pad: int,
                    eos: set[int]) -> list[Answer]:
    """Greedy answers to one batch of (index, prompt ids), left-padded."""
    width = max(len(ids) for _, ids in chunk)
    input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    for r, (_, ids) in enumerate(chunk):
        input_ids[r, width - len(ids):] = torch.tensor(ids)
        mask[r, width - len(ids):] = 1
    dev = model.device
    with torch.no_grad():
        gen = model.generate(input_ids=input_ids.to(dev), attention_mask=mask.to(dev), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=sorted(eos) or None)
    batch = []
    for r, (i, ids) in enumerate(chunk):
        new = gen[r, width:].tolist()
        cut = next((j for j, t in enumerate(new) if t in eos), None)
        resp = new if cut is None else new[:cut + 1]
        batch.append(Answer(i, ids, resp, cut is not None))
    return batch


# --------------------------------------------------------------------------------------------------- packing
@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt tokens: the loss is on the response only


def build_examples(answers: Iterable[Answer]) -> list[Example]:
    out = []
    for a in answers:
        if not a.response_ids:
            continue
        out.append(Example(a.prompt_ids + a.response_ids, [-100] * len(a.prompt_ids) + a.response_ids))
    return out


@dataclass
class Row:
    """Several examples laid end to end; position_ids restart per example. One optimisation step."""

    input_ids: torch.Tensor      # (1, T)
    position_ids: torch.Tensor   # (1, T)
    targets: torch.Tensor        # (N,) next-token targets at `positions`
    positions: torch.Tensor      # (N,) positions whose logits predict a response token
    n_examples: int
    example_ids: list[int] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return int(self.targets.numel())


def _make_row(examples: Sequence[Example], ids: list[int]) -> Row:
    tokens, pos, tgt, where = [], [], [], []
    for ex in examples:
        off = len(tokens)
        tokens += ex.input_ids
        pos += list(range(len(ex.input_ids)))
        for t in range(len(ex.input_ids) - 1):  # logits at t predict token t + 1
            if ex.labels[t + 1] != -100:
                where.append(off + t)
                tgt.append(ex.labels[t + 1])
    return Row(torch.tensor([tokens]), torch.tensor([pos]), torch.tensor(tgt), torch.tensor(where),
               len(examples), ids)


def pack(examples: Sequence[Example], batch_tokens: int = 1024) -> list[Row]:
    """First-fit-decreasing packing of examples into rows of at most `batch_tokens` tokens (deterministic)."""
    if batch_tokens < 2:
        raise DataError("batch_tokens must be at least 2")
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i].input_ids), i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i].input_ids)
        for b in range(len(bins)):
            if room[b] >= n:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max(batch_tokens - n, 0))
    return [_make_row([examples[i] for i in b], b) for b in bins]


def example_spans(row: Row) -> list[tuple[int, int]]:
    """(start, end) token columns of each example packed in `row` (position ids restart at 0 where one begins)."""
    starts = (row.position_ids[0] == 0).nonzero().flatten().tolist() + [row.input_ids.shape[1]]
    return list(itertools.pairwise(starts))


def split_row(row: Row, parts: int) -> list[Row | None]:
    """`row`'s examples dealt round-robin into `parts` rows (None where a part gets no example), for data-parallel
    training: packed examples never attend to each other, so the parts' summed losses are the row's."""
    spans = example_spans(row)
    ids = row.example_ids or list(range(len(spans)))
    out: list[Row | None] = []
    for p in range(parts):
        mine = spans[p::parts]
        if not mine:
            out.append(None)
            continue
        tok, pos, tgt, where, off = [], [], [], [], 0
        for a, b in mine:
            keep = (row.positions >= a) & (row.positions < b)
            tok.append(row.input_ids[0, a:b])
            pos.append(row.position_ids[0, a:b])
            tgt.append(row.targets[keep])
            where.append(row.positions[keep] - a + off)
            off += b - a
        out.append(Row(torch.cat(tok)[None], torch.cat(pos)[None], torch.cat(tgt), torch.cat(where), len(mine),
                       ids[p::parts]))
    return out


def row_logits(model, row: Row) -> torch.Tensor:
    """Float32 logits (N, V) at the positions that predict `row`'s response tokens; differentiable."""
    dev = model.device
    out = model(input_ids=row.input_ids.to(dev), position_ids=row.position_ids.to(dev), use_cache=False,
                logits_to_keep=row.positions.to(dev))
    return out.logits[0].float()


def forward_rows(model, rows: Sequence[Row]) -> None:
    """Run the model over rows without computing logits (for probes that read hidden states)."""
    with torch.no_grad():
        for row in rows:
            dev = model.device
            model(input_ids=row.input_ids.to(dev), position_ids=row.position_ids.to(dev), use_cache=False,
                  logits_to_keep=1)


def row_loss(model, row: Row, reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy of the response tokens in `row` (sum, or mean per token); differentiable."""
    logits = row_logits(model, row)  # (N, V)
    return torch.nn.functional.cross_entropy(logits, row.targets.to(logits.device), reduction=reduction)


def dataset_loss(model, rows: Sequence[Row]) -> float:
    """Mean per-token response loss over rows (no grad)."""
    total, n = 0.0, 0
    with torch.no_grad():
        for row in rows:
            total += float(row_loss(model, row, "sum"))
            n += row.n_tokens
    return total / max(n, 1)
