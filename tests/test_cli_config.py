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
    assert "argument --mode: expected one of a, b, got 'c'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--name: expected a value"):
        config_cli.config_from_args(p.parse_args(["in"]), Toy)
    with pytest.raises(ConfigError, match="--rate: expected >= 0, got -1.0"):
        config_cli.config_from_args(p.parse_args(["in", "--name", "n", "--rate", "-1"]), Toy)
    with pytest.raises(ValueError, match="toy: --mode: expected one of a, b, got 'z'"):
        Toy(path="p", mode="z").validate()


def _dep(old: str, new: str) -> str:
    return f"infer-fast: {old} is deprecated, use {new} ({old} is removed in {config_cli.ALIASES_REMOVED_IN})"


def test_deprecated_aliases_parse_and_warn(capsys):
    p = _parser()
    args = p.parse_args(["in", "--r", "0.25", "--file", "a", "--file", "b", "--no-old-flag", "--name", "n"])
    cfg = config_cli.config_from_args(args, Toy)
    assert (cfg.rate, cfg.files, cfg.flag) == (0.25, ["a", "b"], False)
    err = capsys.readouterr().err.splitlines()
    assert err == [_dep("--r", "--rate"), _dep("--file", "--files"), _dep("--file", "--files"),
                   _dep("--no-old-flag", "--no-flag")]


def test_shared_options_have_one_spelling_and_old_ones_still_work(capsys):
    from infer_fast.cli import build_parser
    from infer_fast.train.config import EvalConfig
    from infer_fast.train.teacher import TeacherConfig

    parser = build_parser()
    args = parser.parse_args(["evaluate", "d", "--wd", "0.1", "--teacher", "a.st", "--teacher", "b.st", "--workers",
                              "0", "--no-divide-epochs"])
    values = config_cli.values_from_args(args, EvalConfig)
    assert values == {"distilled": "d", "weight_decay": 0.1, "teachers": ["a.st", "b.st"], "workers": 0,
                      "dynamic_divide_epochs": False}
    assert capsys.readouterr().err.splitlines() == [
        _dep("--wd", "--weight-decay"), _dep("--teacher", "--teachers"), _dep("--teacher", "--teachers"),
        _dep("--no-divide-epochs", "--no-dynamic-divide-epochs")]
    args = parser.parse_args(["evaluate", "d", "--weight-decay", "0.1", "--teachers", "a.st", "b.st"])
    assert config_cli.values_from_args(args, EvalConfig)["teachers"] == ["a.st", "b.st"]
    assert capsys.readouterr().err == ""
    for workers in (["--workers", "0"], ["--num-workers", "0"]):
        args = parser.parse_args(["train-teacher", "--data", "digits", "--arch", "convnet", "--out", "t.st",
                                  *workers])
        assert config_cli.config_from_args(args, TeacherConfig).num_workers == 0
    assert capsys.readouterr().err == _dep("--num-workers", "--workers") + "\n"
    for cmd in (["evaluate"], ["train-teacher"], ["data", "check"]):
        visible = {s for a in _subparser(parser, cmd)._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
        assert "--workers" in visible and not {"--wd", "--num-workers", "--teacher"} & visible, cmd


def _subparser(parser: argparse.ArgumentParser, cmd: list[str]) -> argparse.ArgumentParser:
    for name in cmd:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


def _commands(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.ArgumentParser]:
    """Every leaf subcommand of the CLI by its full name ("data check", "distill", ...)."""
    from infer_fast.cli import build_parser

    parser = parser or build_parser()
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                leaves = _commands(sub)
                found.update({f"{name} {k}": v for k, v in leaves.items()} if leaves else {name: sub})
    return found


def test_every_option_has_help_shows_its_default_and_every_command_takes_config():
    commands = _commands()
    assert set(commands) == {"data check", "data holdout", "train-teacher", "distill", "evidence", "evaluate",
                             "export", "demo", "info"}
    problems = []
    for name, p in commands.items():
        cls = p._defaults.get("config_class")
        if name == "info":
            assert cls is None and len(p._actions) == 1, "info takes no options"
            continue
        assert "--config" in p._option_string_actions, f"{name}: no --config"
        for f in dataclasses.fields(cls):  # every field, flags or not (a config file can set them all)
            if not f.metadata.get("help"):
                problems.append(f"{name}: field {cls.__name__}.{f.name} has no help")
        fields = {f.name for f in dataclasses.fields(cls)}
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            if isinstance(a, config_cli._Deprecated):  # hidden old spelling of a visible option
                assert a.help == argparse.SUPPRESS and a.canonical in p._option_string_actions, (name, a.option_strings)
                continue
            flag = a.option_strings[0] if a.option_strings else a.dest
            sentence = (a.help or "").split("(default:")[0].replace("(required)", "").strip()
            if a.help == argparse.SUPPRESS or not sentence:
                problems.append(f"{name} {flag}: no help sentence")
            if a.dest in fields and a.option_strings and not ("(default:" in a.help or "(required)" in a.help):
                problems.append(f"{name} {flag}: help shows no default")
    assert not problems, "\n".join(problems)


def test_one_data_source_spelling_and_deprecated_ones(tmp_path, capsys):
    from infer_fast.cli import build_parser

    parser = build_parser()

    def config(argv):
        args = parser.parse_args(argv)
        return config_cli.config_from_args(args, args.config_class)

    for cmd, field in (["distill"], "data"), (["train-teacher", "--arch", "convnet", "--out", "t.st"], "source"):
        assert getattr(config([*cmd, "--data", "digits"]), field) == "digits"
        assert capsys.readouterr().err == ""
        assert getattr(config([*cmd, "--dataset", "digits"]), field) == "digits"
        assert capsys.readouterr().err == _dep("--dataset", "--data") + "\n"
        f = tmp_path / "c.yaml"
        for key in ("data", "dataset"):  # the old key reads in a config file as well, with the same note
            f.write_text(f"{key}: digits\n")
            assert getattr(config([*cmd, "--config", str(f)]), field) == "digits"
        assert capsys.readouterr().err == (f"infer-fast: --config {f}: dataset is deprecated, use data (dataset is "
                                           f"removed in {config_cli.ALIASES_REMOVED_IN})\n")
        ps = _commands(parser)[cmd[0]]
        assert ps._option_string_actions["--data"].metavar == "ROOT|digits"
        assert ps._option_string_actions["--data"].help.startswith(config_cli.DATA_HELP)
    # evaluate validates on --val (default: the data the set was distilled from); --dataset was its old spelling
    assert config(["evaluate", "d", "--val", "digits"]).val == "digits"
    assert config(["evaluate", "d", "--dataset", "digits"]).val == "digits"
    assert capsys.readouterr().err == _dep("--dataset", "--val") + "\n"
    assert config(["export", "d", "--to", "o"]).out == "o"
    assert capsys.readouterr().err == _dep("--to", "--out") + "\n"


def test_off_is_zero_for_every_stop_after():
    for name, p in _commands().items():
        cls = p._defaults.get("config_class")
        for f in dataclasses.fields(cls) if cls else ():
            if f.name == "stop_after":
                assert f.default == 0 and f.type in ("int", int), f"{name}: --stop-after off must be 0"


def test_plan_flags_are_generated_from_plan_settings():
    from infer_fast.synth.plan import PlanSettings

    p = _commands()["distill"]
    plan_flags = {s for s in p._option_string_actions if s.startswith("--plan-") and not s.startswith("--plan-json")}
    assert plan_flags == {config_cli.flag_of(f) for f in dataclasses.fields(PlanSettings)} - {"--plan-json"}
    args = p.parse_args(["--data", "digits", "--plan", "--plan-gpus", "16", "--plan-nodes", "2"])
    settings = config_cli.build_config(PlanSettings, config_cli.values_from_args(args, PlanSettings,
                                                                                 config_file=False))
    assert settings == PlanSettings(gpus=16, nodes=2)
    with pytest.raises(ConfigError, match="--plan-nodes: expected a divisor of --plan-gpus 16, got 3"):
        PlanSettings(gpus=16, nodes=3).validate()


@pytest.mark.parametrize("argv, message", [
    (["bogus"], "infer-fast: error: COMMAND: expected one of data, distill, evidence, export"),
    (["data", "check", "{tmp}/nope"], "infer-fast data check: error: dataset root"),
    (["data", "check", "ROOT", "--workers", "x"], "infer-fast data check: error: --workers: expected int, got 'x'"),
    (["train-teacher", "--data", "digits"], "infer-fast train-teacher: error: --arch, --out: expected a value"),
    (["train-teacher", "--data", "{tmp}/nope", "--arch", "convnet", "--out", "t.st"],
     "infer-fast train-teacher: error: --data: expected digits or a dataset folder, got '"),
    (["train-teacher", "--data", "digits", "--arch", "resnet99", "--out", "t.st"],
     "infer-fast train-teacher: error: --arch: expected one of "),
    (["train-teacher", "--data", "digits", "--arch", "convnet", "--out", "t.st", "--epochs", "0"],
     "infer-fast train-teacher: error: --epochs: expected an integer >= 1, got 0"),
    (["distill"], "infer-fast distill: error: --data: expected a value"),
    (["distill", "--data", "digits", "--ipc", "ten"], "infer-fast distill: error: --ipc: expected int, got 'ten'"),
    (["distill", "--data", "digits", "--method", "magic"], "infer-fast distill: error: --method: expected one of"),
    (["distill", "--data", "digits", "--stop-after", "-1"], "infer-fast distill: error: --stop-after: expected >= 0"),
    (["distill", "--data", "{tmp}", "--out", "{tmp}/o"],
     "infer-fast distill: error: dataset root '{tmp}' has no train split"),
    (["distill", "--data", "{tmp}/nope"], "infer-fast distill: error: --data: expected digits or a dataset folder"),
    (["distill", "--data", "digits", "--plan", "--plan-utilisation", "2"],
     "infer-fast distill: error: --plan-utilisation: expected a fraction in (0, 1], got 2.0"),
    (["distill", "--data", "digits", "--bogus"], "infer-fast distill: error: unrecognized arguments: --bogus"),
    (["evaluate", "{tmp}/nope"], "infer-fast evaluate: error: DIR: expected a distilled dataset folder"),
    (["evaluate", "{tmp}", "--val", "digits", "--lr", "0"], "infer-fast evaluate: error: --lr: expected > 0, got 0.0"),
    (["evaluate", "{tmp}", "--val", "digits", "--student", "resnet99", "--config", "{tmp}/none.yaml"],
     "infer-fast evaluate: error: --config {tmp}/none.yaml: no such file"),
    (["export", "{tmp}"], "infer-fast export: error: --out: expected a value"),
    (["export", "{tmp}", "--out", "{tmp}/o", "--format", "zip"],
     "infer-fast export: error: --format: expected one of imagefolder, ddranking, got 'zip'"),
    (["export", "{tmp}", "--out", "{tmp}/o"], "infer-fast export: error: load_distilled: "),
    (["demo", "--epochs", "0"], "infer-fast demo: error: --epochs: expected >= 1, got 0"),
    (["demo", "--methods", "magic"], "infer-fast demo: error: --methods: expected one of infer, sre2l, random"),
])
def test_user_errors_are_one_line_with_exit_status_2(tmp_path, capsys, argv, message):
    from infer_fast.cli import main

    rc = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(message.format(tmp=tmp_path)), (rc, err)


@pytest.mark.parametrize("cmd, key, value", [
    (["data", "check", "ROOT"], "workers", 3),
    (["train-teacher", "--data", "digits"], "arch", "convnet"),
    (["distill", "--data", "digits"], "ipc", 3),
    (["evaluate", "DIR"], "epochs", 7),
    (["export", "DIR"], "format", "ddranking"),
    (["demo"], "ipc", 2),
])
def test_every_subcommand_takes_a_config_file(tmp_path, cmd, key, value):
    from infer_fast.cli import build_parser

    def config(argv: list[str]):
        args = build_parser().parse_args(argv)
        return config_cli.config_from_args(args, args.config_class)

    f = tmp_path / "c.yaml"
    f.write_text(f"{key}: {value}\n" + ("out: t.safetensors\n" if cmd[0] in ("train-teacher", "export") else ""))
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
                                                  "teacher_cache", "threads", "log_dir", "compensators_from"}
    assert checkpoint.RESUME_KEYS == config_cli.resume_fields(EvalConfig)
    assert set(checkpoint.RESUME_KEYS) == {"distilled", "student", "width", "labels", "epochs", "steps",
                                           "dynamic_divide_epochs", "batch_size", "lr", "weight_decay", "temperature",
                                           "mix", "mixup_alpha", "cutmix_alpha", "preset", "seed", "val", "teachers",
                                           "teacher_classes"}
    assert config_cli.resume_fields(Toy) == ("path", "mode", "rate", "files", "flag", "name")
    teachers = [{"fingerprint": "t"}]
    cfg = DistillConfig(data="digits")
    fp = runner.fingerprint(cfg, teachers, None)
    assert runner.fingerprint(dataclasses.replace(cfg, out="x", device="cpu", threads=1), teachers, None) == fp
    assert runner.fingerprint(dataclasses.replace(cfg, lr=0.1), teachers, None) != fp


def test_per_dataset_defaults_are_resolved_in_the_config():
    from infer_fast.synth.config import DistillConfig

    cfg = DistillConfig(data="digits", image_size=32)
    small, large = cfg.resolved(small=True, num_classes=10), cfg.resolved(small=False, num_classes=10)
    assert (small.iterations, small.r_bn, small.jitter, small.problems_per_batch) == (1000, 1.0, 4, 4)
    assert (large.iterations, large.r_bn, large.jitter) == (2000, 0.01, 32)
    mine = dataclasses.replace(cfg, iterations=5, r_bn=0.5, jitter=0, problems_per_batch=2).resolved(True, 10)
    assert (mine.iterations, mine.r_bn, mine.jitter, mine.problems_per_batch) == (5, 0.5, 0, 2)
    assert small.to_dict()["iterations"] == 1000, "the manifest's config is the resolved one"


def test_many_classes_take_the_measured_r_bn_only_where_it_was_measured():
    from infer_fast.synth.config import MANY_CLASSES, MANY_CLASSES_R_BN, SMALL_DEFAULTS, DistillConfig

    def r_bn(method, small, classes, **kw):
        return DistillConfig(data="digits", image_size=32, method=method, **kw).resolved(small, classes).r_bn

    for method in ("infer", "infer-noise", "infer-swap", "infer-views"):  # one setting for INFER and its controls
        assert r_bn(method, True, MANY_CLASSES + 1) == MANY_CLASSES_R_BN != SMALL_DEFAULTS["r_bn"]
        assert r_bn(method, True, MANY_CLASSES) == SMALL_DEFAULTS["r_bn"], "CIFAR-100 keeps the paper's value"
        assert r_bn(method, True, MANY_CLASSES + 1, r_bn=1.0) == 1.0, "the paper's value stays one flag away"
    assert r_bn("sre2l", True, 200) == SMALL_DEFAULTS["r_bn"], "sre2l keeps the paper's values"
    cfg = DistillConfig(data="digits", image_size=32, iterations=7)
    src = cfg.default_sources(True, 200)
    assert set(src) == {"r_bn", "jitter"} and src["r_bn"].startswith(f"{MANY_CLASSES_R_BN:g}: measured")
    assert cfg.default_sources(True, 10)["r_bn"] == f"{SMALL_DEFAULTS['r_bn']:g}: INFER §3.2, small images"
