"""infer_fast.config_cli: flags, --config files, validation and resume fields derived from the config dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass

import pytest

from infer_fast import config_cli
from infer_fast.config_cli import ConfigError, option


@dataclass
class Toy:
    path: str = option(positional=True, metavar="PATH", help="input")
    mode: str = option("a", choices=("a", "b"), help="the mode")
    rate: float = option(0.5, aliases=["--r"], help="a rate")
    files: list[str] = option(default_factory=list, metavar="FILE", aliases=["--file"])
    flag: bool = option(True, aliases=["--no-old-flag"])
    limit: int | None = option(None, resume=False)
    workers_count: int = option(2, flag="workers", resume=False)
    name: str = option("x", required=True)

    def validate(self) -> None:
        config_cli.check_choices(self, "toy")
        if self.rate < 0:
            raise ValueError(f"toy: --rate: expected >= 0, got {self.rate}")


def _parser(cls: type = Toy) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    config_cli.add_arguments(p, cls)
    return p


def test_flags_are_generated_from_field_metadata(capsys):
    p = _parser()
    flags = {s for a in p._actions for s in a.option_strings}
    assert {"--config", "--mode", "--rate", "--files", "--flag", "--no-flag", "--limit", "--workers", "--name"} <= flags
    assert "--workers-count" not in flags, "the flag metadata renames the flag"
    args = p.parse_args(["in.txt", "--mode", "b", "--files", "x", "y", "--files", "z", "--no-flag", "--workers", "3",
                         "--name", "n"])
    cfg = config_cli.config_from_args(args, Toy)
    assert cfg == Toy(path="in.txt", mode="b", files=["x", "y", "z"], flag=False, workers_count=3, name="n")
    assert vars(p.parse_args(["in.txt"])) == {"path": "in.txt", "config": None}, "only flags given reach the config"
    p.print_help()
    out = capsys.readouterr().out
    assert "the mode (default: 'a')" in out and "(required)" in out and "--r " not in out, "aliases are not listed"


def test_config_file_then_flags_override(tmp_path):
    f = tmp_path / "toy.yaml"
    f.write_text("mode: b\nrate: 1e-3\nfiles: one.bin\nworkers: 4\nname: from-file\n")
    p = _parser()
    cfg = config_cli.config_from_args(p.parse_args(["in", "--config", str(f), "--name", "flag"]), Toy)
    assert (cfg.mode, cfg.rate, cfg.files, cfg.workers_count, cfg.name) == ("b", 1e-3, ["one.bin"], 4, "flag")
    j = tmp_path / "toy.json"
    j.write_text(json.dumps({"workers_count": 5, "name": "j", "limit": None}))
    cfg = config_cli.config_from_args(p.parse_args(["in", "--config", str(j), "--limit", "7"]), Toy)
    assert (cfg.workers_count, cfg.name, cfg.limit) == (5, "j", 7), "field or flag name as key; flags override"


def test_unknown_key_bad_value_and_missing_file_are_named(tmp_path):
    p = _parser()
    f = tmp_path / "bad.yaml"
    for text, msg in [("bogus: 1\n", r"--config .*bad\.yaml: unknown field 'bogus'; Toy fields are files, flag, "),
                      ("mode: c\n", r"bad\.yaml: mode: expected one of a, b, got 'c'"),
                      ("rate: fast\n", r"bad\.yaml: rate: expected float, got 'fast'"),
                      ("flag: maybe\n", r"bad\.yaml: flag: expected bool, got 'maybe'"),
                      ("- a\n- b\n", r"bad\.yaml: expected a mapping of Toy fields, got list"),
                      ("mode: [\n", r"bad\.yaml: not valid YAML")]:
        f.write_text(text)
        with pytest.raises(ConfigError, match=msg):
            config_cli.config_from_args(p.parse_args(["in", "--config", str(f), "--name", "n"]), Toy)
    with pytest.raises(ConfigError, match="nope.yaml: no such file"):
        config_cli.config_from_args(p.parse_args(["in", "--config", str(tmp_path / "nope.yaml")]), Toy)


def test_validation_messages_name_the_flag(capsys):
    p = _parser()
    with pytest.raises(SystemExit):
        p.parse_args(["in", "--mode", "c"])
    assert "argument --mode: invalid choice: 'c'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--name required"):
        config_cli.config_from_args(p.parse_args(["in"]), Toy)
    with pytest.raises(ConfigError, match="--rate: expected >= 0, got -1.0"):
        config_cli.config_from_args(p.parse_args(["in", "--name", "n", "--rate", "-1"]), Toy)
    with pytest.raises(ValueError, match="toy: --mode: expected one of a, b, got 'z'"):
        Toy(path="p", mode="z").validate()
    with pytest.raises(SystemExit, match="^infer-fast toy: --rate: expected >= 0"):
        with config_cli.usage_errors("infer-fast toy"):
            config_cli.config_from_args(p.parse_args(["in", "--name", "n", "--rate", "-1"]), Toy)


def test_deprecated_aliases_parse_and_warn(capsys):
    p = _parser()
    args = p.parse_args(["in", "--r", "0.25", "--file", "a", "--file", "b", "--no-old-flag", "--name", "n"])
    cfg = config_cli.config_from_args(args, Toy)
    assert (cfg.rate, cfg.files, cfg.flag) == (0.25, ["a", "b"], False)
    err = capsys.readouterr().err.splitlines()
    assert err == ["infer-fast: --r is deprecated, use --rate", "infer-fast: --file is deprecated, use --files",
                   "infer-fast: --file is deprecated, use --files",
                   "infer-fast: --no-old-flag is deprecated, use --no-flag"]


def test_shared_options_have_one_spelling_and_old_ones_still_work(capsys):
    from infer_fast.cli import build_parser
    from infer_fast.train.commands import teacher_config_from_args as teacher_config
    from infer_fast.train.config import EvalConfig

    parser = build_parser()
    args = parser.parse_args(["evaluate", "d", "--wd", "0.1", "--teacher", "a.st", "--teacher", "b.st", "--workers",
                              "0", "--no-divide-epochs"])
    values = config_cli.values_from_args(args, EvalConfig)
    assert values == {"distilled": "d", "weight_decay": 0.1, "teachers": ["a.st", "b.st"], "workers": 0,
                      "dynamic_divide_epochs": False}
    assert capsys.readouterr().err.splitlines() == [
        "infer-fast: --wd is deprecated, use --weight-decay", "infer-fast: --teacher is deprecated, use --teachers",
        "infer-fast: --teacher is deprecated, use --teachers",
        "infer-fast: --no-divide-epochs is deprecated, use --no-dynamic-divide-epochs"]
    args = parser.parse_args(["evaluate", "d", "--weight-decay", "0.1", "--teachers", "a.st", "b.st"])
    assert config_cli.values_from_args(args, EvalConfig)["teachers"] == ["a.st", "b.st"]
    assert capsys.readouterr().err == ""
    for workers in (["--workers", "0"], ["--num-workers", "0"]):
        args = parser.parse_args(["train-teacher", "--dataset", "digits", "--arch", "convnet", "--out", "t.st",
                                  *workers])
        assert teacher_config(args).num_workers == 0
    assert capsys.readouterr().err == "infer-fast: --num-workers is deprecated, use --workers\n"
    for cmd in (["evaluate"], ["train-teacher"], ["data", "check"]):
        visible = {s for a in _subparser(parser, cmd)._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
        assert "--workers" in visible and not {"--wd", "--num-workers", "--teacher"} & visible, cmd


def _subparser(parser: argparse.ArgumentParser, cmd: list[str]) -> argparse.ArgumentParser:
    for name in cmd:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


@pytest.mark.parametrize("cmd, key, value", [
    (["data", "check", "ROOT"], "workers", 3),
    (["train-teacher", "--dataset", "digits"], "arch", "convnet"),
    (["distill", "--dataset", "digits"], "ipc", 3),
    (["evaluate", "DIR"], "epochs", 7),
    (["demo"], "ipc", 2),
])
def test_every_subcommand_takes_a_config_file(tmp_path, cmd, key, value):
    from infer_fast.cli import build_parser
    from infer_fast.data.commands import CheckConfig
    from infer_fast.demo import DemoConfig
    from infer_fast.synth.config import DistillConfig
    from infer_fast.train.commands import teacher_config_from_args as teacher_config
    from infer_fast.train.config import EvalConfig

    def config(argv: list[str]):
        args = build_parser().parse_args(argv)
        if cmd[0] == "train-teacher":
            return teacher_config(args)
        cls = {"data": CheckConfig, "distill": DistillConfig, "evaluate": EvalConfig, "demo": DemoConfig}[cmd[0]]
        return config_cli.config_from_args(args, cls)

    f = tmp_path / "c.yaml"
    f.write_text(f"{key}: {value}\n" + ("out: t.safetensors\n" if cmd[0] == "train-teacher" else ""))
    assert getattr(config([*cmd, "--config", str(f)]), key) == value
    f.write_text("no_such_field: 1\n")
    with pytest.raises(ConfigError, match="unknown field 'no_such_field'"):
        config([*cmd, "--config", str(f)])


def test_resume_fields_come_from_metadata():
    from infer_fast.synth import runner
    from infer_fast.synth.config import DistillConfig
    from infer_fast.train import checkpoint
    from infer_fast.train.config import EvalConfig

    names = {f.name for f in dataclasses.fields(DistillConfig)}
    assert names - set(runner._RESULT_FIELDS) == {"out", "resume", "stop_after", "log_every", "device", "label_batch",
                                                  "teacher_cache", "threads", "log_dir"}
    assert checkpoint.RESUME_KEYS == config_cli.resume_fields(EvalConfig)
    assert set(checkpoint.RESUME_KEYS) == {"distilled", "student", "width", "labels", "epochs", "steps",
                                           "dynamic_divide_epochs", "batch_size", "lr", "weight_decay", "temperature",
                                           "mix", "mixup_alpha", "cutmix_alpha", "preset", "seed", "val", "teachers",
                                           "teacher_classes"}
    assert config_cli.resume_fields(Toy) == ("path", "mode", "rate", "files", "flag", "name")
    teachers = [{"fingerprint": "t"}]
    cfg = DistillConfig(dataset="digits")
    fp = runner.fingerprint(cfg, teachers, None)
    assert runner.fingerprint(dataclasses.replace(cfg, out="x", device="cpu", threads=1), teachers, None) == fp
    assert runner.fingerprint(dataclasses.replace(cfg, lr=0.1), teachers, None) != fp


def test_per_dataset_defaults_are_resolved_in_the_config():
    from infer_fast.synth.config import DistillConfig

    cfg = DistillConfig(dataset="digits", image_size=32)
    small, large = cfg.resolved(small=True, num_classes=10), cfg.resolved(small=False, num_classes=10)
    assert (small.iterations, small.r_bn, small.jitter, small.problems_per_batch) == (1000, 1.0, 4, 4)
    assert (large.iterations, large.r_bn, large.jitter) == (2000, 0.01, 32)
    mine = dataclasses.replace(cfg, iterations=5, r_bn=0.5, jitter=0, problems_per_batch=2).resolved(True, 10)
    assert (mine.iterations, mine.r_bn, mine.jitter, mine.problems_per_batch) == (5, 0.5, 0, 2)
    assert small.to_dict()["iterations"] == 1000, "the manifest's config is the resolved one"
