"""`msw` from Python, as the notebooks call it: the command line in a child process of this
interpreter, so a long stage's memory goes back when it ends and a kernel restart is never needed."""

from __future__ import annotations

import subprocess
import sys


def msw(*args: object, quiet: bool = True) -> None:
    """Run `msw ARGS` with this interpreter (it returns nothing, so a notebook cell ending in it
    shows only the line below).

    Finished stages are cached in the run folder, so calling it again is fast. What it reports (for
    `msw run`, the whole summary) is cut to its last line on screen, after any warning it gave; on
    failure everything it printed, its error included, is shown and a RuntimeError names the command
    and its exit code. `quiet` passes `-q`; with `quiet=False` the progress bars go to this process's
    stderr as they come (in Jupyter, the server's log)."""
    argv = [str(a) for a in args]
    if not argv:
        raise ValueError("msw() needs a subcommand, e.g. msw('run', '--preset', 'micro')")
    done = subprocess.run([sys.executable, "-m", "medsafetyworld", *(["-q"] if quiet else []), *argv],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE if quiet else None, text=True)
    said = (done.stderr or "").strip()
    if done.returncode:
        print("\n".join(filter(None, [done.stdout.strip(), said])))
        raise RuntimeError(f"msw {' '.join(argv)} failed (exit {done.returncode})")
    if said:
        print(said)
    lines = done.stdout.strip().splitlines()
    print(lines[-1] if lines else f"msw {argv[0]}: done")
