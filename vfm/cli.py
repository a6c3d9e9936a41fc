"""Command-line entry points (tools/train.py, tools/eval.py): parse, call the library, report errors.

A `VfmError` becomes one line on stderr and exit status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from vfm.errors import VfmError

EXIT_USAGE = 2
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _setup_logging(quiet: bool = False) -> None:
    """Console logging (warnings only on ranks other than 0)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(_LOG_FORMAT, "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)


def _buffer_log_records() -> logging.handlers.MemoryHandler:
    """Keep the records logged from now on for train.log, which is opened once the run may write its work dir."""
    buffer = logging.handlers.MemoryHandler(capacity=1_000_000, flushLevel=logging.CRITICAL + 1)
    logging.getLogger().addHandler(buffer)
    return buffer


def _start_log_file(work_dir: Path, buffer: logging.handlers.MemoryHandler) -> None:
    """Open work_dir/train.log with everything logged so far, and log into it from now on."""
    file_handler = logging.FileHandler(work_dir / "train.log")
    file_handler.setFormatter(logging.Formatter(_LOG_FORMAT, "%H:%M:%S"))
    buffer.setTarget(file_handler)
    buffer.flush()
    root = logging.getLogger()
    root.removeHandler(buffer)
    root.addHandler(file_handler)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with its errors as one `error:` line (the full usage is for --help)."""

    def error(self, message: str) -> NoReturn:
        # parse_intermixed_args lists the optional key=value positional among the missing ones: drop it.
        message = re.sub(r", key=value|key=value, ", "", message)
        message = message.replace("the following arguments are required:", "missing argument:")
        usage = " ".join(self.format_usage().split(":", 1)[1].split())
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message}; usage: {usage}\n")


def _run(main: Callable[[argparse.Namespace, list[str]], int], parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides: a.b=1, a.list=[1,2], +a.new=1")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="key=value", help="more overrides (mmengine's spelling)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for config/data/checkpoint errors")
    args = parser.parse_intermixed_args(argv)
    try:
        return main(args, [*args.overrides, *args.cfg_options])
    except Exception as error:
        if args.debug:
            raise
        line = _worker_error_line(error)
        if line is None and not isinstance(error, VfmError):
            raise
        print(f"error: {line or error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _worker_error_line(error: Exception) -> str | None:
    """One line for an error raised inside a DataLoader worker (None for any other error)."""
    if "DataLoader worker" not in str(error):  # vfm.data pulls in torch: only for errors that can be one
        return None
    from vfm.data.loader import worker_error_message

    return worker_error_message(error)


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from vfm.config import dump_config, load_config, to_yaml
    from vfm.dist.launch import destroy_distributed, init_distributed, read_launch_env
    from vfm.engine.run_config import RunConfig
    from vfm.engine.trainer import Trainer, validate_run_config
    from vfm.engine.validation import validate_work_dir

    cfg = load_config(args.config, overrides, RunConfig)
    if cfg.work_dir is None:
        cfg.work_dir = str(Path("work_dirs") / Path(args.config).stem)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    validate_run_config(cfg)
    validate_work_dir(cfg, cfg.work_dir)  # before config.yaml and train.log are written into it
    # torchrun or srun variables, or none: join the process group before anything is built.
    env = read_launch_env()
    init_distributed(env, timeout_s=cfg.dist.timeout_s)
    _setup_logging(quiet=not env.is_main_process)
    buffer = _buffer_log_records()
    try:
        work_dir = Path(cfg.work_dir)
        logger = logging.getLogger("vfm.train")
        logger.info("work dir %s; config %s; %s", work_dir, args.config,
                    f"{env.world_size} processes ({env.launcher})" if env.is_distributed else "one process")
        # Built and resumed before anything is written, so a bad dataset, objective or checkpoint leaves the
        # work dir as it was.
        trainer = Trainer(cfg, work_dir)
        trainer.resume()
        if not args.dry_run and env.is_main_process:
            work_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, work_dir / "config.yaml")
            _start_log_file(work_dir, buffer)
        result = trainer.train(dry_run=args.dry_run)
        if result.get("val"):
            logger.info("final evaluation (step %s): %s", result.get("val_step"), json.dumps(result["val"]))
    finally:
        logging.getLogger().removeHandler(buffer)
        destroy_distributed()
    return 0


def train_main(argv: Sequence[str] | None = None) -> int:
    """`vfm-train CONFIG [key=value ...] [--print-config] [--dry-run] [--debug]`."""
    parser = OneLineErrorParser(
        prog="train.py",
        description="Train from a YAML config. Overrides: key.sub=value, list=[1,2], +new.key=value "
        "(also after --cfg-options).",
    )
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--dry-run", action="store_true", help="build everything, run one step and one evaluation, exit")
    return _run(_train, parser, argv)


def _eval(args: argparse.Namespace, overrides: list[str]) -> int:
    from vfm.config import load_config
    from vfm.engine.evaluate import evaluate_checkpoints
    from vfm.engine.run_config import RunConfig

    # The checkpoint list and the overrides are both positional: key=value items are overrides.
    checkpoints = [a for a in args.checkpoint if "=" not in a or Path(a).exists()]
    overrides = [a for a in args.checkpoint if a not in checkpoints] + overrides
    if not checkpoints:
        raise VfmError("eval.py: no checkpoint given (CONFIG CHECKPOINT [CHECKPOINT ...])")
    if args.out:
        from vfm.paths import check_output_folder

        check_output_folder(Path(args.out).parent, "--out")
        if Path(args.out).is_dir():
            raise VfmError(f"--out: got {args.out!r}, expected a file name (it is a folder)")
    cfg = load_config(args.config, overrides, RunConfig)
    _setup_logging()
    # Evaluators may log their own tables (COCO's, in percent); the table below is the one answer, in fractions.
    logging.getLogger("vfm.evaluation").setLevel(logging.WARNING)
    results = evaluate_checkpoints(cfg, checkpoints, args.weights, args.set)
    names = list(dict.fromkeys(k for metrics in results.values() for k in metrics))
    width = max([len(k) for k in names] + [6])
    columns = [Path(c).name for c in results] if len(results) > 1 else ["value"]
    print(f"{'metric':<{width}}  " + "  ".join(f"{c:>12}" for c in columns))
    for key in names:
        print(f"{key:<{width}}  " + "  ".join(f"{m[key]:>12.4f}" if key in m else f"{'-':>12}" for m in results.values()))
    if args.out:
        payload = next(iter(results.values())) if len(results) == 1 else results
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


def _visualize(args: argparse.Namespace, overrides: list[str]) -> int:
    from vfm.config import load_config
    from vfm.engine.run_config import RunConfig
    from vfm.evaluation.visualize_detections import visualize
    from vfm.paths import check_output_folder

    check_output_folder(args.out, "--out")
    cfg = load_config(args.config, overrides, RunConfig)
    _setup_logging()
    written = visualize(cfg, args.checkpoint, args.images, args.out, args.score_threshold, args.weights)
    print(f"wrote {len(written)} image(s) to {args.out}")
    return 0


def visualize_main(argv: Sequence[str] | None = None) -> int:
    """`visualize_detections.py CONFIG CHECKPOINT IMAGE_OR_DIR --out DIR`: draw a detector's boxes on images."""
    parser = OneLineErrorParser(prog="visualize_detections.py", description="Draw a detector's predictions as PNGs.")
    parser.add_argument("config", help="YAML config of the detector (e.g. the config.yaml a run wrote)")
    parser.add_argument("checkpoint", help=".pt checkpoint or .safetensors weights")
    parser.add_argument("images", help="an image file or a folder of images")
    parser.add_argument("--out", default="vis", help="output folder for the PNGs (default: vis)")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="draw boxes scoring at least this")
    parser.add_argument("--weights", choices=["auto", "model", "ema"], default="auto",
                        help="which weights of a training checkpoint to use (auto: those the run evaluated)")
    return _run(_visualize, parser, argv)


def eval_main(argv: Sequence[str] | None = None) -> int:
    """`vfm-eval CONFIG CHECKPOINT [CHECKPOINT ...] [--set NAME ...] [key=value ...]`: evaluate weights on the
    config's evaluation sets (data.val and eval.sets)."""
    parser = OneLineErrorParser(prog="eval.py", description="Evaluate checkpoints on the config's evaluation sets "
                                     "(data.val, named 'val', and every eval.sets entry).")
    parser.add_argument("config", help="YAML config (e.g. the config.yaml a run wrote to its work dir)")
    parser.add_argument("checkpoint", nargs="+", help=".pt checkpoints or .safetensors weights (one column each)")
    parser.add_argument("--set", action="append", default=None, metavar="NAME",
                        help="evaluate only this set (repeatable; 'val' is data.val); default: every set")
    parser.add_argument("--weights", choices=["auto", "model", "ema"], default="auto",
                        help="which weights of a training checkpoint to use (auto: those the run evaluated)")
    parser.add_argument("--out", help="also write the metrics as JSON to this file")
    return _run(_eval, parser, argv)
