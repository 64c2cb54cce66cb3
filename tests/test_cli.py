"""`hopscotch info | ask | export` on a tiny model directory."""

from __future__ import annotations

import json

import pytest

import hopscotch_core as hc
from hopscotch_core import cli


def test_info_prints_the_summary(tiny_dir, capsys):
    assert cli.main(["info", "--model", str(tiny_dir), "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "llama" and info["layers"] == 4 and info["kv_heads"] == 2
    assert 0 < info["attention_parameter_share"] < 1 and info["removed_attention_blocks"] == []


def test_ask_shows_original_and_skipped(tiny_dir, capsys):
    assert cli.main(["ask", "--model", str(tiny_dir), "--device", "cpu", "--skip", "1,2", "--prompt", "hi",
                     "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "--- original" in out and "--- skipped [1, 2]" in out
    assert cli.main(["ask", "--model", str(tiny_dir), "--skip", "9", "--prompt", "hi"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_export_writes_a_reloadable_compact_model(tiny_dir, tmp_path, capsys):
    out = tmp_path / "small"
    assert cli.main(["export", "--model", str(tiny_dir), "--device", "cpu", "--skip", "0,3", "--out", str(out)]) == 0
    assert "fewer" in capsys.readouterr().out
    small, tok = hc.load_model(out, device="cpu")
    assert hc.compact_info(small).skipped == (0, 3) and tok is not None
    assert cli.main(["ask", "--model", str(out), "--prompt", "hi", "--max-new-tokens", "3"]) == 0
    assert "compact model" in capsys.readouterr().out
    assert cli.main(["export", "--model", str(tiny_dir), "--out", str(tmp_path / "x")]) == 2
    assert "nothing to export" in capsys.readouterr().err


BAD_RUN_INPUT = [  # (command, extra flags, what the one error line must say)
    ("train", ["--skip", "3,3"], "more than once"),
    ("train", ["--skip", "-1"], "negative"),
    ("train", ["--skip", "1.5"], "comma-separated block indices"),
    ("train", ["--skip", "9"], "out of range"),           # known once the model (4 layers) is loaded
    ("train", ["--skip", "1", "--lr", "0"], "lr must be a positive number"),
    ("train", ["--skip", "1", "--lr", "-1"], "lr must be a positive number"),
    ("train", ["--skip", "1", "--lr", "nan"], "lr must be a positive number"),
    ("train", ["--skip", "1", "--epochs", "0"], "epochs must be at least 1"),
    ("run", ["--score-lr", "0"], "score-lr must be a positive number"),
    ("run", ["--k", "0"], "k must be at least 1"),
    ("run", ["--k", "4"], "choose 1 <= k < 4"),
    ("run", ["--mode", "greedy"], "unknown mode"),
    ("run", ["--shortlist-by", "norm"], "unknown shortlist ranking"),
    ("run", ["--n-calib", "0"], "n-calib must be at least 1"),
    ("run", ["--max-new-tokens", "0"], "max-new-tokens must be at least 1"),
    ("run", ["--threshold", "inf"], "threshold must be a finite number"),
    ("run", ["--seed", "-3"], "seed must be a whole number"),
    ("run", ["--baselines", "magic"], "unknown baseline"),
    ("run", ["--k", "2.5"], "invalid int value"),
    ("run", ["--n-eval", "0"], "n-eval must be at least 1"),
    ("run", ["--gen-batch", "0"], "gen-batch must be at least 1"),
    ("run", ["--batch-tokens", "0"], "batch-tokens must be at least 1"),
    ("run", ["--data", "{tmp}/empty.jsonl"], "holds no records"),             # an empty calibration set
    ("run", ["--data", "{tmp}/nocol.jsonl"], "no prompt column found"),
    ("run", ["--data", "{tmp}/missing.jsonl"], "does not exist"),
    ("run", ["--objective", "mse"], "unknown objective 'mse'"),
    ("train", ["--skip", "1", "--objective", "KL"], "unknown objective 'KL'"),
    ("run", ["--granularity", "row"], "unknown granularity 'row'"),
    ("run", ["--objective", "ce+kl", "--kl-weight", "-0.5"], "kl-weight must be a finite number >= 0"),
    ("train", ["--skip", "1", "--kl-weight", "nan"], "kl-weight must be a finite number >= 0"),
    ("run", ["--kl-weight", "inf"], "kl-weight must be a finite number >= 0"),
    ("run", ["--lora-rank", "-1"], "lora-rank must be a whole number >= 0"),
    ("run", ["--lora-rank", "1.5"], "invalid int value"),
    ("train", ["--skip", "1", "--lora-rank", "33"], "use at most 32"),   # the tiny model's o_proj is 32 x 32
    ("run", ["--lora-lr", "0"], "lora-lr must be a positive number"),
    ("run", ["--preset", "fast"], "invalid choice: 'fast'"),
    ("run", ["--preset", "quick", "--n-calib", "0"], "n-calib must be at least 1"),  # a flag beside a preset wins
]


@pytest.mark.parametrize("command,flags,says", BAD_RUN_INPUT, ids=[" ".join([c, *f]) for c, f, _ in BAD_RUN_INPUT])
def test_bad_run_settings_are_refused_before_any_work(command, flags, says, tiny_dir, tmp_path, capsys,
                                                      monkeypatch):
    from hopscotch_core.method import data

    def no_answers(*a, **k):
        raise AssertionError("answers were generated for a refused run")

    monkeypatch.setattr(data, "generate_answers", no_answers, raising=False)
    runs = tmp_path / "runs"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"what is {i} plus 1?"}) + "\n" for i in range(12)))
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "nocol.jsonl").write_text('{"q": 1}\n')
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]  # a later --data replaces the default one
    try:
        code = cli.main([command, "--model", str(tiny_dir), "--device", "cpu", "--data", str(prompts),
                         "--runs-dir", str(runs), "--name", "bad", *flags])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert says in err and "error:" in err and "Traceback" not in err
    assert not (runs / "bad").exists()


def test_the_python_api_refuses_the_same_settings():
    from hopscotch_core.errors import InvalidBlocksError
    from hopscotch_core.method.pipeline import RunSettings

    with pytest.raises(InvalidBlocksError, match="more than once"):
        RunSettings(blocks=[3, 3]).validate()
    with pytest.raises(InvalidBlocksError, match="out of range"):
        RunSettings(blocks=[1, 30]).validate(num_layers=30)
    with pytest.raises(hc.HopscotchError, match="lr must be a positive number"):
        RunSettings(lr=float("nan")).validate()
    RunSettings(blocks=[1, 29]).validate(num_layers=30)  # fine


@pytest.mark.parametrize("command", ["ask", "export"])
def test_an_adapter_of_another_granularity_is_refused_before_any_work(command, tiny_dir, tmp_path, capsys,
                                                                      monkeypatch):
    from hopscotch_core.engine import generation
    from hopscotch_core.integrations import export

    model, _ = hc.load_model(tiny_dir, device="cpu")
    hs = hc.attach(model).skip([1])
    hs.set_granularity("channel")
    hs.save(tmp_path / "adapter", objective="kl")
    hs.detach()

    def no_work(*a, **k):
        raise AssertionError("work started for a refused request")

    monkeypatch.setattr(generation, "generate_text", no_work)
    monkeypatch.setattr(export, "export", no_work)
    extra = ["--prompt", "hi"] if command == "ask" else ["--out", str(tmp_path / "out")]
    code = cli.main([command, "--model", str(tiny_dir), "--device", "cpu", "--adapter", str(tmp_path / "adapter"),
                     "--granularity", "scalar", *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "error: the adapter at" in err and "trained with granularity 'channel', but 'scalar' was asked" in err
    assert not (tmp_path / "out").exists()


def test_an_adapter_with_deltas_of_another_rank_is_refused_before_any_work(tiny_dir, tmp_path, capsys, monkeypatch):
    from hopscotch_core.engine import generation

    model, _ = hc.load_model(tiny_dir, device="cpu")
    hs = hc.attach(model).skip([1]).set_lora_rank(2)
    hs.save(tmp_path / "adapter", objective="kl")
    hs.detach()

    def no_work(*a, **k):
        raise AssertionError("work started for a refused request")

    monkeypatch.setattr(generation, "generate_text", no_work)
    code = cli.main(["ask", "--model", str(tiny_dir), "--device", "cpu", "--adapter", str(tmp_path / "adapter"),
                     "--lora-rank", "4", "--prompt", "hi"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "has low-rank deltas of rank 2, but rank 4 was asked" in err
