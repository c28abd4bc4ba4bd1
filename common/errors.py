"""The project's exceptions, and the one place that turns them into a line on stderr.

`common/` raises these (never SystemExit); each script's entry point runs
`errors.run(main)`, which prints `<script>: error: <message>` and exits with the error's
status: 2 for bad input (flags, files, run folders), 1 for a run that failed on its own
(NaN loss, a peer worker that never came back). A bug still shows its traceback.
Tests call main() directly and see the exception.
"""
import gc
import os
import re
import shlex
import sys


class FinsentError(Exception):
    """Bad input: the message names the flag, file or line, and the fix."""
    exit_code = 2


class DataError(FinsentError, ValueError):
    """Bad data: the message names the file and line."""


class FlagError(FinsentError):
    """A flag's value cannot work (the message names the flag)."""


class ModelError(FinsentError):
    """--model / --init-from cannot be loaded as asked."""


class RunDirError(FinsentError):
    """The run folder cannot be used (unwritable, or holds another run)."""


class NothingToDo(FinsentError):
    """Not an error: the work is done already (a finished run's command run again). The
    message says so and where; exit 0."""
    exit_code = 0


class TrainingFailed(FinsentError):
    """The inputs were fine but the run failed (NaN loss, a child run failed, peers gone)."""
    exit_code = 1


def run_child(cmd, env=None, on_line=None):
    """Run another project script in its own process: the one way every script starts one.
    Its output streams through; with on_line, each line of it (stdout and stderr) goes to
    on_line instead. If it fails, fail with its exit status and one line naming it (and its
    last line of output when that was not shown). Returns the child's own resource usage
    (os.wait4: its peak RSS, not the largest of all children's)."""
    import subprocess
    last = None
    if on_line is None:
        child = subprocess.Popen(cmd, env=env)
    else:
        child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in child.stdout:
            last = line.strip() or last
            on_line(line)
    _, status, usage = os.wait4(child.pid, 0)
    code = child.returncode = os.waitstatus_to_exitcode(status)
    if code:
        said = "(its error is above)" if on_line is None else f"({last[:300] if last else 'no output'})"
        err = TrainingFailed(f"{' '.join(os.path.basename(str(c)) for c in cmd[1:3])} ... failed with exit "
                             f"status {code} {said}")
        err.exit_code = code if code in (1, 2) else 1
        raise err
    return usage


def disk_full(error) -> bool:
    """An error from a full disk (or quota), whichever library raised it: OSError's errno, or the
    message TensorFlow's and HDF5's file writers carry."""
    import errno
    return getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or \
        any(text in str(error) for text in ("No space left on device", "Disk quota exceeded"))


def first_line(error) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def one_line(text) -> str:
    """`text` with line breaks shown as \\n and \\r: a message quoting what a user passed (a
    folder or file name, a flag's value, a CSV cell) stays one line, as scripts and logs
    read it."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def shell_quote(word) -> str:
    """`word` quoted to paste into a shell, on one line: shlex.quote's quoting (spaces, quotes,
    $() stay text), except that a line break or carriage return is written $'\\n' / $'\\r'
    (bash, zsh and ksh read it back; shlex would keep the raw break, which one_line would then
    show as a \\n that pastes as two characters).

    >>> shell_quote("my run $(x)\\nb")
    "'my run $(x)'$'\\\\n'b"
    """
    return "".join({"\n": "$'\\n'", "\r": "$'\\r'"}.get(part) or shlex.quote(part)
                   for part in re.split(r"([\r\n])", str(word)) if part) or "''"


def shell_join(words) -> str:
    """The command `words` as one line to paste into a shell (shell_quote on each word)."""
    return " ".join(shell_quote(w) for w in words)


def run(main) -> None:
    """Call main(); a FinsentError becomes one line on stderr and its exit status."""
    try:
        main()
    except NothingToDo as e:
        print(f"{os.path.basename(sys.argv[0])}: {one_line(e)}", flush=True)
        sys.exit(0)
    except FinsentError as e:
        print(f"{os.path.basename(sys.argv[0])}: error: {one_line(e)}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except Exception as e:
        if not disk_full(e):
            raise
        where = getattr(e, "filename", None)
        print(f"{os.path.basename(sys.argv[0])}: error: the disk is full{' writing ' + one_line(where) if where else ''} "
              f"({first_line(e)}); free space there and run the same command again", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{os.path.basename(sys.argv[0])}: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    finally:
        gc.freeze()  # what the run made too: the exit does not walk it (common/env.py)
