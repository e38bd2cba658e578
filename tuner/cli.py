"""`tuner search | best | compare | validate | list`: argument parsing only; each command returns an exit status.

0 success, 2 a user error (one `error:` line, no traceback), 1 anything unexpected, 130 Ctrl-C (SIGINT),
143 SIGTERM (tuner.interrupt), 141 a closed output pipe.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import os
import shlex
import signal
import sys
import traceback
from dataclasses import dataclass

from tuner import interrupt
from tuner.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors follow the contract too: one line, exit 2
        raise UserError(f"{self.prog}: {message}")


def _port(text: str) -> int:
    """A TCP port a server can listen on: 1 to 65535 (0 would pick a port nobody is told about)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; give one from 1 to 65535 (default 8080)")
    return port


def resume_command(argv: list[str], resumed: bool = False, again: bool = False) -> str:
    """The command that continues an interrupted `tuner search ARGV`: the same arguments, shell-quoted, with
    --resume added unless `resumed` (the parsed --resume, which argparse also sets for a prefix like --resu),
    and without --overwrite (or a prefix of it), which reads as "replace" and replaces nothing on --resume.
    `again`: the command that starts the search anew instead, ARGV as it is."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    prog = "python -m tuner" if spec is not None and spec.name == "tuner.__main__" else "tuner"
    if again:
        return f"{prog} {shlex.join(argv)}"
    argv = [a for a in argv if not (a.startswith("--o") and "--overwrite".startswith(a))]
    return f"{prog} {shlex.join(argv if resumed or '--resume' in argv else argv + ['--resume'])}"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tuner", description="Hyperparameter search for image classifiers (Ray Tune + Optuna + PyTorch).")
    p.add_argument("--version", action="store_true", help="print tuner's version and exit")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    s = sub.add_parser("search", help="run a search space (or suite), retrain the best config, compare")
    s.add_argument("--space", required=True, help="a space or suite YAML file, or a built-in space's name "
                   "(`tuner spaces` lists them)")
    s.add_argument("--name", help="experiment name (default: the file's name:, then its stem)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a dotted key (YAML value)")
    s.add_argument("--results", default="results", help="results folder (default ./results)")
    s.add_argument("--address", help="join a running Ray cluster: auto, HOST:6379 or ray://host:10001")
    s.add_argument("--storage", help="where trials keep checkpoints: a folder every node reaches, or a URI "
                   "such as s3://bucket/path (default <results>/<name>/ray)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted experiment of the same name")
    s.add_argument("--retry-failed", action="store_true", help="with --resume: run the failed trials again")
    s.add_argument("--overwrite", action="store_true", help="replace a search of the same name and its export "
                   "(without it that is refused; a --smoke result is replaced freely)")
    s.add_argument("--smoke", action="store_true", help="2 trials, 1 epoch, a small subset: check a file end to end")
    s.add_argument("--no-retrain", action="store_true", help="stop after the search")
    s.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    s.add_argument("--verbose", action="store_true", help="Ray's own status tables and logs instead of tuner's lines")

    b = sub.add_parser("best", help="print the best trial; --export writes the deployable bundle")
    b.add_argument("--experiment", help="experiment name or folder (default: the latest in --results)")
    b.add_argument("--export", nargs="?", const="", default=None, metavar="DIR",
                   help="write the bundle (default <results>/<name>/export/)")
    b.add_argument("--pareto", action="store_true", help="list the Pareto front of a multi-objective search")
    b.add_argument("--trial", metavar="ID", help="take this trial instead of the best (retrained on --export)")
    b.add_argument("--format", default="bundle", choices=["bundle", "onnx"],
                   help="onnx: also model.onnx + preprocessing.json beside the bundle (implies --export)")
    b.add_argument("--results", default="results")

    c = sub.add_parser("compare", help="one table over experiments' retrained best models")
    c.add_argument("experiments", nargs="*", help="names or folders (default: every experiment in --results)")
    c.add_argument("--results", default="results")
    c.add_argument("--format", default="md", choices=["md", "csv", "html", "tex"])

    v = sub.add_parser("validate", help="parse and check a space file without running anything")
    v.add_argument("--space", required=True, help="a space or suite YAML file, or a built-in space's name")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    d = sub.add_parser("dashboard", help="serve an experiment's study with optuna-dashboard on 127.0.0.1")
    d.add_argument("--experiment", help="experiment name or folder (default: the latest in --results)")
    d.add_argument("--results", default="results")
    d.add_argument("--port", type=_port, default=8080, help="1 to 65535 (default 8080)")

    r = sub.add_parser("report", help="(re)write results/<name>/report.html, one page to open in a browser")
    r.add_argument("--experiment", help="experiment name or folder (default: the latest in --results)")
    r.add_argument("--results", default="results")

    ls = sub.add_parser("list", help="the experiments in a results folder")
    ls.add_argument("--results", default="results")

    sub.add_parser("schema", help="print a JSON Schema of the space-file grammar (for editors)")
    sub.add_parser("spaces", help="the built-in space files, each with the seed experiment it reproduces")
    return p


def main(argv: list[str] | None = None) -> int:
    """The `tuner` command. With `argv` None it is the program itself (python -m tuner, the console script):
    SIGINT and SIGTERM then stay tuner's until the process has exited, Ray's shutdown included, and the
    process ends as `_ProgramEnd` says; called with a list (from Python, tests) the caller's handlers come back
    when it returns, and a Ray it started stays up for the next call."""
    if argv is not None:
        return _command(list(argv), program=False)
    end = _ProgramEnd()
    atexit.register(end.exit)  # registered before anything imports Ray: run last, after Ray's own handler
    end.code = _command(sys.argv[1:], program=True)
    return end.code


@dataclass
class _ProgramEnd:
    """After its atexit handlers, Python tears every module down and collects the whole heap: 1.6 s after a
    search (torch, Ray, pandas and matplotlib loaded), longer than writing its report. Nothing of tuner
    waits for it (tables and files are written whole and closed, Ray's and MLflow's own atexit handlers have
    run by then), so once they have, the program leaves at once with the command's exit status."""
    code: int | None = None  # None: the command did not return (an error outside it); Python ends as usual

    def exit(self) -> None:
        if self.code is None:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a reader that has gone (`tuner best | head`) is not an error
                stream.flush()
        os._exit(self.code)


def _end_ray() -> None:
    """The program's command has returned: end the Ray it started now, while the console is quiet, rather
    than in Ray's atexit handler, which first sleeps half a second for worker output (tuner's console shows
    none; --verbose's ended with the trials). Never imports Ray: most commands do not load it."""
    if "ray" in sys.modules:
        from tuner.search.cluster import end_ray

        end_ray()


def _command(argv: list[str], program: bool) -> int:
    args = None
    previous = interrupt.begin(lambda signum: _interrupted_line(signum, argv, args))
    try:
        interrupt.signal_for_tests("start")
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.version:
            from tuner import __version__

            print(f"tuner {__version__}")
            return 0
        if not args.command:
            parser.print_help()
            return 2
        from tuner import commands

        # `spaces` would shadow commands.py's import of tuner.spaces, so that one function has a trailing _
        return getattr(commands, "spaces_" if args.command == "spaces" else args.command)(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `tuner best | head`: the reader has gone; say nothing more (stdout is closed) and exit as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            traceback.print_exc()
            return 1
        return _disk_full(exc, argv, args)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (tuner.interrupt): one line, 130 or 143
        return interrupt.finish(exc)
    except Exception:  # noqa: BLE001 - the one place that turns a bug into exit status 1
        traceback.print_exc()
        return 1
    finally:
        if program:
            interrupt.exiting()
            _end_ray()
        else:
            interrupt.restore(previous)


def _disk_full(exc: OSError, argv: list[str], args) -> int:
    # a full disk is the one OSError a user fixes: say so in one line, and that nothing was rolled back
    where = f" writing {exc.filename}" if exc.filename else ""
    again = (resume_command(argv, args.resume) if getattr(args, "command", None) == "search"
             else "tuner search --resume")
    print(f"error: the disk is full{where}; what was written before it is kept, a search's finished trials "
          f"included: free some space and run the command again (`{again}` continues a search)", file=sys.stderr)
    return 2


def _interrupted_line(signum: int, argv: list[str], args) -> str:
    """What an interrupted command says: for a search, the command that continues it, or, when nothing was
    saved yet, the one that starts it again."""
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    if (getattr(args, "command", None) or (argv[0] if argv else None)) != "search":  # args: None while parsing
        return what
    resumed = bool(getattr(args, "resume", "--resume" in argv))
    if interrupt.resumable(default=resumed):  # the user's own arguments, which --resume needs again
        return f"{what}; `{resume_command(argv, resumed)}` continues where this stopped"
    options = ("--resume", "--retry-failed")  # or a prefix argparse took for one
    again = resume_command([a for a in argv if not any(a.startswith(o[:6]) and o.startswith(a) for o in options)],
                           again=True)
    return f"{what} before anything was saved: nothing to resume; `{again}` starts the search again"


if __name__ == "__main__":
    raise SystemExit(main())
