"""The whole Hopscotch method as a resumable run: prompts -> own answers -> selection -> training -> evaluation.

    settings = RunSettings(model="default", k=4, mode="paper")
    run = run_pipeline(settings, runs_dir="runs")            # or resume: the same call with name=...
    run.manifest["selected"]                                 # blocks in selection order

Each stage writes into the run directory (runs.py) as it goes and reads back what is already there, so a run
that was stopped, killed or crashed continues with the next prompt batch, candidate or epoch. Resuming with
different settings is refused with the list of differences. Long work reports to `on_progress(step, total,
info)` and ends cleanly, state saved, when `should_stop()` turns true.

Over N processes (torchrun, `group` = distributed.Group): every rank runs the same stages on the same data; rank 0
alone reads and writes the run directory and broadcasts what it read (so the other machines need no copy of it);
answers, candidate scores and training rows are spread over the ranks (data.py, selection.py, training.py), and
the results equal a one-process run's. The manifest records the `world_size` of the latest start; a run resumes
with any number of processes.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from .. import __version__
from . import data, deltainit, distributed, selection, training
from ..measure import metrics
from ..engine import lowrank
from ..engine.artifacts import LORA_PREFIX, model_identity
from ..errors import HopscotchError
from . import runs
from .runs import Run, RunError, RunStore, append_jsonl, read_json, read_jsonl, write_json
from ..engine.scaling import attach, handle_of
from .settings import LEGACY, RunSettings  # noqa: F401 - the run settings live there (one schema)

Progress = Callable[[int, int, dict], None]
STAGES = ("prompts", "generate", "select", "train", "evaluate", "baselines")


def _diff(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def open_run(settings: RunSettings, runs_dir: str, name: str | None = None) -> tuple[Run, bool]:
    """Create the run directory, or reopen it when settings match. Returns (run, resumed)."""
    settings.validate()
    store = RunStore(runs_dir)
    store.ensure_writable()
    if name is None:
        base = f"{time.strftime('%Y%m%d-%H%M%S')}-{settings.mode}-k{settings.k}-s{settings.seed}"
        name, n = base, 1
        while store.path(name).exists():
            n += 1
            name = f"{base}-{n}"
    path = store.path(name)
    wanted = dataclasses.asdict(settings)
    if (path / runs.MANIFEST).is_file():
        run = Run(path)
        old = {**LEGACY, **run.manifest.get("settings", {})}  # a run older than a setting had its LEGACY value
        if old != wanted:
            raise RunError(f"run {name!r} exists with other settings; resume it with the same ones or pick another "
                           "name. Differences: " + "; ".join(_diff(old, wanted)))
        return run, True
    path.mkdir(parents=True)
    run = Run(path)
    write_json(run.file(runs.MANIFEST), {
        "format_version": 1, "name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "state": runs.CREATED,
        "stage": None, "settings": wanted, "selected": [], "results": {}, "timings": {},
        "versions": {"hopscotch": __version__, "torch": torch.__version__,
                     "transformers": _version("transformers"), "python": platform.python_version()},
    })
    return run, False


def _version(pkg: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def check_run_model(run: Run, model) -> dict:
    """The model's identity, after checking it is the model the run was made with (if the run has one yet)."""
    ident = model_identity(model)
    old = run.manifest.get("model")
    if old and (old["config_hash"], old["num_layers"]) != (ident["config_hash"], ident["num_layers"]):
        raise RunError(f"run {run.name!r} was made with another model ({old.get('source')})")
    return ident


class Follower:
    """The run as ranks other than 0 see it: they never touch the run directory (rank 0 writes it and broadcasts
    what they need); `manifest` is rank 0's final manifest once the pipeline ends."""

    def __init__(self, name: str | None = None):
        self.name, self.dir, self.final = name, None, {}

    @property
    def manifest(self) -> dict:
        return self.final

    def update(self, **fields: Any) -> dict:
        return {}

    def log(self, message: str) -> None:
        pass

    def file(self, name: str):
        raise RuntimeError("only rank 0 reads and writes the run directory")  # a bug if reached


class Pipeline:
    """Runs the stages of one run on one model (see module docstring)."""

    def __init__(self, run: Run | Follower, settings: RunSettings, model, tok, on_progress: Progress | None = None,
                 should_stop: Callable[[], bool] | None = None, group: distributed.Group | None = None):
        self.run, self.s, self.model, self.tok = run, settings, model, tok
        self.g = group or distributed.LOCAL
        self.main = self.g.main
        self.on_progress = on_progress if self.main else None
        self.should_stop = should_stop or (lambda: False)

        def check() -> None:
            if handle_of(model) is not None:
                raise HopscotchError("the pipeline needs a model without an attached Hopscotch handle")
            from ..engine.families import get_family

            n = get_family(model).num_layers
            selection.check_config(selection.SelectConfig(settings.k, settings.mode, settings.shortlist,
                                                          settings.shortlist_by), n)

        def record_model() -> None:
            run.update(model=check_run_model(run, model))

        self.g.check_all(check)
        self.g.on_main(record_model)

    # ------------------------------------------------------------------------------------------------ helpers
    def _progress(self, step: int, total: int, info: dict) -> None:
        if self.on_progress is not None:
            self.on_progress(step, total, info)

    def _stopped(self) -> bool:
        """A stop asked on any rank (every rank calls this at the same points, so all stop at the same step)."""
        return self.g.any(self.should_stop())

    def _on_main(self, fn: Callable[[], Any]) -> Any:
        """fn() on rank 0 (reads of the run directory); its result on every rank."""
        return self.g.on_main(fn)

    def _timed(self, stage: str, fn: Callable[[], Any]) -> Any:
        # stage_started: when this stage began in this process (the job list's time left extrapolates from it)
        self.run.update(state=runs.RUNNING, stage=stage, pid=os.getpid(), stage_started=time.time())
        self.run.log(f"stage {stage}: start")
        t, cpu = time.perf_counter(), time.process_time()
        out = fn()
        stopped = self._stopped()
        if self.main:
            # wall seconds, and CPU seconds of this process (all its threads): on a busy machine the wall time
            # grows while the CPU time stays what the work costs; both add up over resumes
            m = self.run.manifest
            timings, cpu_timings = m.get("timings", {}), m.get("cpu_timings", {})
            timings[stage] = round(timings.get(stage, 0.0) + time.perf_counter() - t, 2)
            cpu_timings[stage] = round(cpu_timings.get(stage, 0.0) + time.process_time() - cpu, 2)
            self.run.update(timings=timings, cpu_timings=cpu_timings)
        self.run.log(f"stage {stage}: {'stopped' if stopped else 'done'}")
        return out

    # ------------------------------------------------------------------------------------------------ stages
    def prompts(self) -> dict:
        return self._on_main(self._prompts)

    def _prompts(self) -> dict:
        """The seeded split: calibration and held-out prompts, and `train_extra`, the further prompts the final
        training reads (n_train - n_calib of them, after the other two in the same seeded order)."""
        path = self.run.file(runs.PROMPTS_FILE)
        split = read_json(path)
        records = None
        if split is None:
            records = data.load_prompts(self.s.data, self.s.column)
            calib, held = data.split_indices(len(records), *self.s.split_sizes(len(records)), self.s.seed)
            split = {"source": self.s.data, "column": self.s.column, "total": len(records),
                     "calib": [{"index": i, **records[i]} for i in calib],
                     "eval": [{"index": i, **records[i]} for i in held]}
        n_extra = self.s.train_size(len(split["calib"]), split["total"]) - len(split["calib"])
        if len(split.get("train_extra") or []) != n_extra:  # new, or a run prepared before it trained on more
            records = records or data.load_prompts(self.s.data, self.s.column)
            extra = data.extra_indices(len(records), len(split["calib"]), len(split["eval"]), n_extra, self.s.seed)
            split["train_extra"] = [{"index": i, **records[i]} for i in extra]
            write_json(path, split)
        elif not path.is_file():
            write_json(path, split)
        return split

    def generate(self, split: dict) -> dict[str, list[data.Answer]]:
        prompts = [r["prompt"] for r in split["calib"]] + [r["prompt"] for r in split["eval"]]
        have = {a["index"]: data.Answer.from_json(a)
                for a in self._on_main(lambda: read_jsonl(self.run.file(runs.ANSWERS_FILE)))}

        def save(batch: list[data.Answer]) -> None:
            append_jsonl(self.run.file(runs.ANSWERS_FILE), [a.to_json() for a in batch])

        if len(have) < len(prompts):
            self.run.log(f"generating {len(prompts) - len(have)} answers ({len(have)} already cached)")
            new = data.generate_answers(self.model, self.tok, prompts, self.s.max_new_tokens, self.s.gen_batch,
                                        skip=have, on_batch=save if self.main else None,
                                        on_progress=self._progress, should_stop=self._stopped, group=self.g)
            have.update({a.index: a for a in new})
        ordered = [have[i] for i in sorted(have)]
        nc = len(split["calib"])
        return {"calib": [a for a in ordered if a.index < nc], "eval": [a for a in ordered if a.index >= nc]}

    def train_answers(self, split: dict) -> list[data.Answer]:
        """The original's greedy answers to the extra training prompts (split["train_extra"]): read from the run's
        train-answers.jsonl, else from the answers cache shared by every run of this model (engine.stamps
        cache_dir()/answers, keyed by the model's weights, dtype, device kind, answer length and prompt text),
        else generated, and written to both as they come (a stop or kill loses at most one batch)."""
        prompts = [r["prompt"] for r in split.get("train_extra") or []]
        if not prompts:
            return []
        shared = self._on_main(lambda: data.AnswerCache.for_model(self.model, self.tok, self.s.max_new_tokens))
        have = {a["index"]: data.Answer.from_json(a)
                for a in self._on_main(lambda: read_jsonl(self.run.file(runs.TRAIN_ANSWERS_FILE)))
                if a.get("index", -1) < len(prompts)}
        if self.main and len(have) < len(prompts) and shared is not None:
            found = shared.lookup({i: p for i, p in enumerate(prompts) if i not in have})
            if found:
                append_jsonl(self.run.file(runs.TRAIN_ANSWERS_FILE), [a.to_json() for a in found])
                self.run.log(f"{len(found)} training answers from the shared answer cache")
                have.update({a.index: a for a in found})
        have = self.g.broadcast(have if self.main else None)

        def save(batch: list[data.Answer]) -> None:
            append_jsonl(self.run.file(runs.TRAIN_ANSWERS_FILE), [a.to_json() for a in batch])
            if shared is not None:
                shared.add([(prompts[a.index], a) for a in batch])

        if len(have) < len(prompts):
            self.run.log(f"generating {len(prompts) - len(have)} answers to the extra training prompts "
                         f"({len(have)} already there)")
            new = data.generate_answers(self.model, self.tok, prompts, self.s.max_new_tokens, self.s.gen_batch,
                                        skip=have, on_batch=save if self.main else None,
                                        on_progress=self._progress, should_stop=self._stopped, group=self.g)
            have.update({a.index: a for a in new})
        return [have[i] for i in sorted(have)]

    def rows(self, answers: list[data.Answer]) -> list[data.Row]:
        return data.pack(data.build_examples(answers), self.s.batch_tokens)

    def objective(self, hs, rows, file: str = runs.TEACHER_FILE) -> training.Objective:
        """The run's objective; for kl / ce+kl with the original model's top-k log-probs on `rows`, computed once
        and kept in `file` of the run (written atomically: a kill leaves none or all): teacher.safetensors for
        the calibration rows, teacher-train.safetensors for the extra training rows."""
        obj = training.Objective(self.s.objective, self.s.kl_weight)
        if obj.needs_teacher and rows:
            def load_or_build() -> training.TeacherCache:  # on rank 0; the other ranks get its cache
                path = self.run.file(file)
                cache = training.TeacherCache.load(path, rows)
                if cache is None:
                    self.run.log(f"teacher: top-{training.TEACHER_TOP_K} log-probs of the original model on "
                                 f"{len(rows)} rows ({file})")
                    cache = training.TeacherCache.build(hs, rows, on_progress=self._progress)
                    cache.save(path)
                return cache

            obj.teacher = self._on_main(load_or_build)
        return obj

    def train_objective(self, hs, rows, extra_rows, objective: training.Objective) -> training.Objective:
        """The objective over the training rows (the calibration rows, then the extra ones): the calibration
        rows' teacher joined with the extra rows' (made once, teacher-train.safetensors)."""
        if not extra_rows or not objective.needs_teacher:
            return objective
        extra = self.objective(hs, extra_rows, runs.TRAIN_TEACHER_FILE)
        return training.Objective(objective.name, objective.kl_weight,
                                  training.TeacherCache.concat(objective.teacher, extra.teacher))

    def select(self, hs, rows, objective: training.Objective | None = None) -> selection.Selection:
        if self.s.blocks is not None:  # a given skip set: nothing to select
            hs.set_skipped(self.s.blocks)  # validates the indices
            hs.reset()
            sel = selection.Selection(selected=list(self.s.blocks), status="given")
            self.run.update(selected=sel.selected, selection={"rounds": [], "status": sel.status})
            return sel
        cfg = selection.SelectConfig(self.s.k, self.s.mode, self.s.shortlist, self.s.shortlist_by, self.s.score_lr,
                                     self.s.threshold, self.s.seed, objective)
        done = self._on_main(lambda: read_jsonl(self.run.file(runs.SCORES_FILE)))
        save = (lambda r: append_jsonl(self.run.file(runs.SCORES_FILE), [r])) if self.main else None
        sel = selection.greedy_select(hs, rows, cfg, done=done, on_score=save, on_progress=self._progress,
                                      should_stop=self._stopped, group=self.g)
        self.run.update(selected=sel.selected, selection={"rounds": sel.rounds, "status": sel.status})
        return sel

    def train(self, hs, blocks: list[int], rows, eval_rows, tag: str = "", mlp: list[int] = (),
              objective: training.Objective | None = None) -> dict:
        """Train scales with `blocks` skipped; resumable per epoch. Returns the metrics of the last epoch."""
        hs.configure(blocks, skipped_mlp=mlp)

        def folder():  # rank 0 only: the other ranks never touch the run directory
            return self.run.file(f"{runs.SCALES_DIR}{tag}")

        def last_epoch() -> tuple[int, dict | None]:
            folder().mkdir(exist_ok=True)
            return runs.last_epoch(folder())

        hs.set_lora_rank(self.s.lora_rank)  # deltas are trained once the set is chosen (selection scores without)
        epoch, last = self._on_main(last_epoch)
        start, opt_state = epoch + 1, None
        if last is None and self.s.lora_rank and self.s.delta_init == "lsq":
            self._lsq_start(hs, blocks, rows, tag)
        if last is not None:
            hs.set_scales(last.pop("scales"))
            channels = last.pop("channel_scales", None)
            if channels is not None:
                hs.set_channel_scales(channels)
            deltas = lowrank.split_state(last, LORA_PREFIX)
            if deltas:
                hs.set_lora(deltas)
            opt_state = {k: v for k, v in last.items() if not k.startswith(LORA_PREFIX)}

        def on_epoch(epoch: int, record: dict, scales: torch.Tensor, adam: dict) -> None:
            channels = hs.effective_channel_scales()
            runs.write_epoch(folder(), epoch, {
                "scales": scales, **({"channel_scales": channels} if channels is not None else {}),
                **{LORA_PREFIX + k: v for k, v in hs.lora_state().items()}, **adam})
            append_jsonl(self.run.file(runs.METRICS_FILE), [{"stage": f"train{tag}", **record, "time": time.time()}])

        def progress(step: int, total: int, info: dict) -> None:
            self._progress(step, total, {**info, "stage": f"train{tag}"})

        cfg = training.TrainConfig(self.s.lr, self.s.epochs, self.s.seed, objective, self.s.lora_lr)
        res = training.train_scales(hs, rows, eval_rows, cfg, start_epoch=start, opt_state=opt_state,
                                    on_progress=progress, on_epoch=on_epoch if self.main else None,
                                    should_stop=self._stopped, group=self.g)
        if res.status == "diverged":
            self.run.log(f"train{tag}: loss became NaN/inf; kept the last good scalars")
        epochs = self._on_main(lambda: [r for r in read_jsonl(self.run.file(runs.METRICS_FILE))
                                        if r.get("stage") == f"train{tag}"])
        return {"status": res.status, "epochs": epochs}

    def _lsq_start(self, hs, blocks: list[int], rows, tag: str) -> None:
        """The deltas' closed-form start (deltainit.py), the same on every rank (each reads the same rows)."""
        def progress(step: int, total: int, info: dict) -> None:
            self._progress(step, total, {**info, "stage": f"train{tag}"})

        state, fits = deltainit.lsq_deltas(hs, rows, blocks, on_progress=progress)
        hs.set_lora(state)
        self.run.log(f"train{tag}: deltas start from the least-squares fit of each skipped block's output: "
                     + ", ".join(f"block {f['block']} on layer {f['layer']}'s down_proj explains "
                                 f"{f['explained']:.1%}" for f in fits))
        if self.main:
            append_jsonl(self.run.file(runs.METRICS_FILE), [{"stage": f"delta-init{tag}", "fits": fits,
                                                             "time": time.time()}])

    def evaluate(self, hs, blocks: list[int], eval_rows, mlp: list[int] = ()) -> dict:
        """Held-out NLL of the original / unscaled / trained model, and KL(original || modified) and top-1
        agreement for the last two (NLL alone rewards scalars that sharpen the model's own answers)."""
        trained, channels, deltas = hs.effective_scales(), hs.effective_channel_scales(), hs.lora_state()
        variants = {"unscaled": {"skipped": blocks, "scales": None, "skipped_mlp": mlp},
                    "trained": {"skipped": blocks, "scales": trained, "skipped_mlp": mlp,
                                "channel_scales": channels, "lora": deltas}}
        res = metrics.compare(hs, eval_rows, variants)  # the original model runs once for both
        out = {"eval_loss_original": res["original"]["nll"]}
        for tag in variants:
            out.update({f"eval_loss_{tag}": res[tag]["nll"], f"eval_kl_{tag}": res[tag]["kl"],
                        f"eval_agreement_{tag}": res[tag]["agreement"]})
        hs.configure(blocks, trained, mlp, channels, deltas)  # leave the trained state applied (the adapter is saved
        # from it)
        return out

    def baselines(self, hs, rows, eval_rows, objective: training.Objective | None = None, train_rows=None,
                  train_objective: training.Objective | None = None) -> dict:
        """Rank each baseline's set on the calibration `rows` (as the selection scored), then train it on
        `train_rows` (default: the same rows) like Hopscotch's own set, and evaluate it."""
        train_rows = rows if train_rows is None else train_rows
        train_objective = objective if train_objective is None else train_objective
        def write(results: dict) -> None:
            if self.main:
                write_json(self.run.file(runs.BASELINES_FILE), results)

        results, round_one = self._on_main(lambda: (
            read_json(self.run.file(runs.BASELINES_FILE), {}),
            {r["candidate"]: r["loss"] for r in read_jsonl(self.run.file(runs.SCORES_FILE))
             if r["round"] == 0 and r["kind"] == "paper"}))
        for name in self.s.baselines:
            if self._stopped():
                break
            if results.get(name, {}).get("done"):
                continue
            # baseline sets are ranked like selection candidates (scalars and channels only); then trained with
            # every part Hopscotch's own set trains (deltas and their start included), so the difference between
            # the two trained sets is the sets', not the parts'
            hs.set_lora_rank(0)
            entry = results.get(name) or selection.baseline_blocks(
                name, hs, rows, self.s.k, self.s.seed, round_one if self.s.mode == "paper" else None,
                self.s.score_lr, self._progress, objective=objective, group=self.g)
            entry = self.g.broadcast(entry)  # rank 0's blocks: every rank trains the same set
            results[name] = entry
            write(results)
            if self.s.train_baselines:
                tr = self.train(hs, entry["attention"], train_rows, eval_rows, tag=f"-{name}", mlp=entry["mlp"],
                                objective=train_objective)
                if tr["status"] == runs.STOPPED:
                    break
            else:
                hs.reset()
            entry.update(self.evaluate(hs, entry["attention"], eval_rows, entry["mlp"]), done=True)
            if not self.s.train_baselines:
                entry["eval_loss_trained"] = None
            write(results)
            self.run.log(f"baseline {name}: {entry['attention']} unscaled {entry['eval_loss_unscaled']:.4f}")
        return results

    # ------------------------------------------------------------------------------------------------ all
    def run_all(self, stages: tuple[str, ...] = STAGES) -> Run:
        run, s = self.run, self.s
        try:
            split = self._timed("prompts", self.prompts)
            if "generate" not in stages:
                return self._finish(runs.PROMPTED)
            answers = self._timed("generate", lambda: self.generate(split))
            if self._stopped():
                return self._finish(runs.STOPPED)
            rows, eval_rows = self.rows(answers["calib"]), self.rows(answers["eval"])
            run.update(data={"calib_examples": len(answers["calib"]), "eval_examples": len(answers["eval"]),
                             "calib_rows": len(rows), "calib_tokens": sum(r.n_tokens for r in rows),
                             "eval_tokens": sum(r.n_tokens for r in eval_rows),
                             "unfinished_answers": sum(not a.finished for a in answers["calib"] + answers["eval"])})
            if "select" not in stages:
                return self._finish(runs.GENERATED)
            with attach(self.model) as hs:
                hs.set_granularity(s.granularity)
                objective = (self._timed("teacher", lambda: self.objective(hs, rows)) if s.objective != "ce"
                             else self.objective(hs, rows))
                sel = self._timed("select", lambda: self.select(hs, rows, objective))
                if self._stopped():
                    return self._finish(runs.STOPPED)
                if "train" not in stages:
                    return self._finish(runs.SELECTED)
                # the final training reads the calibration rows and the extra training prompts' rows after them
                extra = self._timed("generate", lambda: self.train_answers(split))
                if self._stopped():
                    return self._finish(runs.STOPPED)
                extra_rows = self.rows(extra)
                if extra:
                    run.update(data={**run.manifest.get("data", {}), "train_extra_examples": len(extra),
                                     "train_rows": len(rows) + len(extra_rows),
                                     "train_tokens": sum(r.n_tokens for r in rows + extra_rows)})
                train_obj = (self._timed("teacher", lambda: self.train_objective(hs, rows, extra_rows, objective))
                             if extra else objective)
                train_rows = rows + extra_rows
                tr = self._timed("train", lambda: self.train(hs, sel.selected, train_rows, eval_rows,
                                                             objective=train_obj))
                if tr["status"] == runs.STOPPED:
                    return self._finish(runs.STOPPED)
                results = self._timed("evaluate", lambda: self.evaluate(hs, sel.selected, eval_rows))
                results["train_status"] = tr["status"]
                run.update(results=results)
                if self.main:
                    hs.save(run.file(runs.ADAPTER_DIR), objective=s.objective)
                if "baselines" in stages and s.baselines:
                    self._timed("baselines", lambda: self.baselines(hs, rows, eval_rows, objective, train_rows,
                                                                    train_obj))
                    if self._stopped():
                        return self._finish(runs.STOPPED)
            return self._finish(runs.DONE)
        except BaseException as e:
            run.update(state=runs.FAILED if not isinstance(e, KeyboardInterrupt) else runs.STOPPED,
                       error=f"{type(e).__name__}: {e}")
            run.log(f"failed: {type(e).__name__}: {e}")
            raise

    def _finish(self, state: str) -> Run | Follower:
        self.run.update(state=state, stage=None, error=None)
        self.run.log(f"state: {state}")
        final = self.g.broadcast(self.run.manifest if self.main else None)
        if not self.main:
            self.run.final = final
        return self.run


def run_pipeline(settings: RunSettings, runs_dir: str, name: str | None = None, model=None, tok=None,
                 stages: tuple[str, ...] = STAGES, on_progress: Progress | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 group: distributed.Group | None = None) -> Run | Follower:
    """Open (or resume) a run and carry it through `stages`; loads the model unless one is given.

    Everything that can be checked before work starts is: settings, the runs directory, k against the model's
    layer count, the tokenizer, and (for a new run) that the data loads. With a process `group` (torchrun), every
    rank is also checked to have the same settings; each check refuses the run on every rank with one message.
    Ranks other than 0 return a Follower (its manifest: rank 0's final one).
    """
    from ..engine.families import get_family

    g = group or distributed.LOCAL
    g.same({"settings": dataclasses.asdict(settings), "name": name, "stages": list(stages)}, "settings")
    g.check_all(settings.validate)

    def check_store() -> None:
        store = RunStore(runs_dir)
        store.ensure_writable()
        existing = name is not None and (store.path(name) / runs.MANIFEST).is_file()  # path() checks the name
        if not existing:  # a bad data file, or one too small for the prompts asked, fails before anything loads
            records = data.load_prompts(settings.data, settings.column)
            calib, held = settings.split_sizes(len(records))
            if settings.n_train and settings.n_train < calib:
                raise HopscotchError(f"n-train ({settings.n_train}) must be at least the {calib} calibration "
                                     "prompts: the final training reads them and more (0 = those only)")
            data.split_indices(len(records), calib, held, settings.seed)
            data.extra_indices(len(records), calib, held, settings.train_size(calib, len(records)) - calib,
                               settings.seed)

    g.on_main(check_store)
    if model is None:
        from ..engine.loading import load_model

        model, tok = g.check_all(lambda: load_model(settings.model, device=g.device_for(settings.device),
                                                    dtype=settings.dtype))

    def check_model() -> None:
        if tok is None:
            raise HopscotchError(f"{settings.model} has no tokenizer; the method generates the model's own "
                                 "answers, so the model directory must include one")
        family = get_family(model)
        settings.validate(family.num_layers)  # blocks and k against the model, before any answer
        lowrank.check_rank(settings.lora_rank, family)  # the rank against the projections' widths

    g.check_all(check_model)

    def open_() -> Run:
        run, resumed = open_run(settings, runs_dir, name)
        run.update(world_size=g.world)
        run.log(("resuming" if resumed else "created") + f" run {run.name}"
                + (f" on {g.world} processes" if g.world > 1 else ""))
        return run

    run = open_() if g.world == 1 else g.on_main(lambda: open_().name)
    if g.world > 1:
        run = RunStore(runs_dir).open(run) if g.main else Follower(run)
    return Pipeline(run, settings, model, tok, on_progress, should_stop, g).run_all(stages)
