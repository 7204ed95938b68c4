"""The `asyncrl` command: learner, generator, local, ctl, keys, export, bench.

Arguments are parsed before torch is imported, so `--help` and config errors are instant.
Configuration: `--config FILE_OR_PRESET` plus dotted overrides (`train.steps=50`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from asyncrl.launch.config import (
    ConfigError,
    describe_fields,
    dump_config,
    load_config,
    reference_markdown,
)

logger = logging.getLogger("asyncrl")


def _setup_logging(role: str, level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _claim_stdout():
    """Keep stdout for the learner's JSON events: they get a private copy of the descriptor
    and descriptor 1 is pointed at stderr, so what libraries print (DeepSpeed's accelerator
    warning and op builds, from Python or C++) cannot interleave with them. Called before
    torch and DeepSpeed are imported."""
    import os

    sys.stdout.flush()
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return events


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default=None,
        help="YAML file or preset name (tiny-cpu, single-gpu-hf, multi-gpu-sglang)",
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved configuration and exit"
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="section.field=value",
        help="dotted overrides applied after the config file",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asyncrl", description="Asynchronous off-policy RL for language models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("learner", help="run the learner (hub on rank 0; torchrun for ranks)")
    _add_common(p)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p = sub.add_parser("generator", help="run one generator process")
    _add_common(p)
    p.add_argument("--learner", default=None, help="learner control address tcp://HOST:PORT")
    p = sub.add_parser("local", help="learner + N generators on this machine")
    _add_common(p)
    p = sub.add_parser("keys", help="create CurveZMQ keys for authenticated sockets")
    p.add_argument("--dir", required=True, help="directory to write the keys into")
    p.add_argument("--clients", default="client", help="comma-separated client key names")
    p.add_argument(
        "--operators",
        default="",
        help="comma-separated operator key names: only these may use `asyncrl ctl` under "
        "CURVE (an existing server key is kept)",
    )
    p = sub.add_parser("ctl", help="show or change a running learner's live settings")
    p.add_argument("--learner", required=True, help="learner control address tcp://HOST:PORT")
    p.add_argument("--curve-dir", default=None, help="key directory, when the learner uses CURVE")
    p.add_argument("--operator", default="operator", help="operator key name (NAME.key_secret)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply")
    p.add_argument("--json", action="store_true", help="print the reply as one JSON object")
    p.add_argument("op", choices=["get", "set", "history"])
    p.add_argument("changes", nargs="*", metavar="section.field=value", help="for set")
    p = sub.add_parser("export", help="turn a checkpoint into a Hugging Face model directory")
    p.add_argument("--checkpoint", required=True, help="a run's checkpoint/ dir or a tag in it")
    p.add_argument("--output", default=None, help="default: the run's export/<tag>")
    p = sub.add_parser("audit", help="check a run's group audit log (learner.audit_log)")
    p.add_argument("run_dir", help="the run's learner.output_dir")
    p.add_argument("--max-reuse", type=int, default=0, help="the run's buffer.max_reuse")
    p = sub.add_parser("config-fields", help="list every config field with its description")
    p.add_argument("--markdown", action="store_true", help="the reference page (docs/config.md)")
    p = sub.add_parser("bench", help="measure efficiency ratios on this machine")
    p.add_argument("--quick", action="store_true", help="smaller sizes, about 3 minutes")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated sections: transport, weights, objective, memory, learner, "
        "pipeline, learning",
    )
    p.add_argument(
        "--without-learning", action="store_true", help="the full bench less its learning grid"
    )
    p.add_argument("--etas", default="", help="learning: staleness limits (0,1,2,4,8)")
    p.add_argument("--objectives", default="", help="learning: objectives (ppo,decoupled_ppo)")
    p.add_argument("--seeds", default="", help="learning: seeds (0,1)")
    p.add_argument("--steps", type=int, default=0, help="learning: steps per run (0: 120)")
    p.add_argument("--eval-every", type=int, default=0, help="learning: 0 = steps / 40")
    p.add_argument("--target", type=float, default=0.7, help="learning: accuracy to reach")
    p.add_argument("--out", default="bench-learning", help="learning: JSON and PNG directory")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="section.field=value",
        help="learning: an override for every run (repeatable)",
    )
    p.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config-fields":
        print(
            reference_markdown() if args.markdown else "\n".join(describe_fields()) + "\n", end=""
        )
        return 0
    if args.command == "keys":
        from asyncrl.protocol.sockets import create_curve_keys

        names = [n.strip() for n in args.clients.split(",") if n.strip()]
        ops = [n.strip() for n in args.operators.split(",") if n.strip()]
        create_curve_keys(args.dir, names, ops)
        print(
            f"wrote server and client keys ({', '.join(names)}) to {args.dir}; set "
            f"security.curve_dir={args.dir} on the learner and every generator"
        )
        if ops:
            print(f"operator keys ({', '.join(ops)}): asyncrl ctl --curve-dir {args.dir} ...")
        return 0
    if args.command == "ctl":
        from asyncrl.launch import ctl

        return ctl.main(args)
    if args.command == "export":
        from asyncrl.learner.export import ExportError, export_checkpoint

        out = _claim_stdout()  # stdout: the path alone, whatever DeepSpeed prints
        try:
            print(export_checkpoint(args.checkpoint, args.output), file=out)
        except ExportError as exc:
            print(f"asyncrl export: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "audit":
        return _audit(args.run_dir, args.max_reuse)
    if args.command == "bench":
        # stdout: the results alone (one JSON object with --json), whatever DeepSpeed prints
        out = _claim_stdout()
        _setup_logging("bench", args.log_level)
        from asyncrl.launch.bench import format_table, run_bench

        only = [x.strip() for x in args.only.split(",") if x.strip()] or None
        learning = None
        if (not only and not args.without_learning) or (only and "learning" in only):
            learning = {
                "etas": _ints(args.etas),
                "objectives": tuple(x.strip() for x in args.objectives.split(",") if x.strip()),
                "seeds": _ints(args.seeds),
                "steps": args.steps or None,
                "eval_every": args.eval_every or None,
                "target": args.target,
                "out_dir": args.out,
                "extra": tuple(args.set),
            }
            learning = {k: v for k, v in learning.items() if v not in ((), None)}
        results = run_bench(quick=args.quick, only=only, learning=learning)
        print(json.dumps(results) if args.json else format_table(results), file=out)
        return 0
    overrides = list(args.overrides)
    if getattr(args, "learner", None):
        overrides.append(f"generator.learner={args.learner}")
    try:
        # No --config: the embedded default, exactly the tiny-cpu preset.
        cfg = load_config(args.config or "tiny-cpu", overrides)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"asyncrl: {line}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from asyncrl.launch.preflight import PreflightError, preflight

    try:
        # Before DeepSpeed, the model or an engine loads: a bad path costs a second.
        preflight(cfg, args.command)
    except PreflightError as exc:
        print(f"asyncrl {args.command}: {exc}", file=sys.stderr)
        return 2
    if args.command == "learner":
        events = _claim_stdout()
        _setup_logging("learner", args.log_level)
        from asyncrl.launch.learner_main import run
        from asyncrl.learner.hub import HubStopped, RewardFailing
        from asyncrl.learner.tracking import TrackerUnavailable

        try:
            run(cfg, args.resume, events)
        except TrackerUnavailable as exc:
            print(f"asyncrl learner: {exc}", file=sys.stderr)
            return 2
        except HubStopped as exc:
            print(
                f"asyncrl learner: hub socket loop stopped ({exc}); restart with --resume",
                file=sys.stderr,
            )
            return 3
        except RewardFailing as exc:
            print(f"asyncrl learner: {exc}", file=sys.stderr)
            return 4
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from asyncrl.learner.engine import exit_multi_rank

            exit_multi_rank(0)
        return 0
    if args.command == "generator":
        _setup_logging(f"generator[{cfg.generator.generator_id or '-'}]", args.log_level)
        from asyncrl.generators.session import LearnerRefused
        from asyncrl.launch.generator_main import generator_main

        try:
            return generator_main(cfg)
        except LearnerRefused as exc:
            print(f"asyncrl generator: {exc}", file=sys.stderr)
            return 2
    if args.command == "local":
        events = _claim_stdout()
        _setup_logging("local", args.log_level)
        from asyncrl.launch import local

        local.EVENTS = events
        return local.run_local(cfg, args.log_level)
    return 2


def _audit(run_dir: str, max_reuse: int) -> int:
    """Print the audit's verdict as one JSON object; exit 0 when nothing was trained twice or
    lost and the run finished, 1 otherwise, 2 when there is no audit log to read."""
    from asyncrl.learner.audit import check_audit, read_events

    path = Path(run_dir) / "audit.jsonl"
    if not path.is_file():
        print(f"asyncrl audit: {path}: no audit log (set learner.audit_log=true)", file=sys.stderr)
        return 2
    try:
        report = check_audit(read_events(path), max_reuse)
    except ValueError as exc:
        print(f"asyncrl audit: {exc}", file=sys.stderr)
        return 1
    verdict = {
        "ok": report.ok,
        "finished": report.finished,
        "incarnations": report.incarnations,
        "accepted": report.accepted,
        "trained": report.trained,
        "dropped_after_accept": report.dropped,
        "trained_twice": report.trained_twice[:20],
        "lost": report.lost[:20],
        "rollbacks": report.rollbacks,
    }
    print(json.dumps(verdict))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
