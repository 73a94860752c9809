"""Wall time of `bench run suites/quickstart.toml` at two commits, side by side, and where it went.

    .venv/bin/python benchmarks/wall_time.py --before REV [--after HEAD] [--rounds 1] [--suite suites/quickstart.toml]
                                             [--same-suite] [--after-args "--jobs 0"]
                                             [--after-defaults "serve = false" "save = false"]

Each commit is checked out into a temporary worktree and run with this checkout's virtual environment.
Each first runs once untimed (it pretrains any zoo base its commit does not find cached), so every timed
run is a "second run" as a user makes it. Rounds alternate the order. Printed: each run's wall time,
the ratio after/before of the medians, and — where the commit prints it — the run's own split of its
wall time (`where the time went`) with training's share.

By default each commit runs its own copy of the suite file (what `bench run suites/quickstart.toml` does at that
commit, whatever the file asked for then); `--same-suite` runs the before commit's file at both, so both do the
same work. `--after-args` adds arguments to the after commit's `bench run` only (flags the before commit lacks).
`--after-defaults` adds TOML lines to the `[defaults]` of the after side's copy of the suite file: train keys whose
defaults now do work the before commit never did (`serve = false`: no serving measurement; `save = false`: no adapter
kept), so that with `--same-suite` both sides do the same work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(tree: Path, suite: str, extra: list[str] = ()) -> tuple[float, str]:
    out = Path(tempfile.mkdtemp(prefix="bench-wall-"))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench", "run", suite, "--results-dir", str(out / "results"),
                           "--reports-dir", str(out / "reports"), "--no-progress", *extra], cwd=tree, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{tree}: bench run exited {done.returncode}\n{done.stderr[-2000:]}")
    text = done.stdout + done.stderr
    split = " ".join(text.split("where the time went:", 1)[1].split("records:")[0].split()) if "where the time went" in text else ""
    return wall, split


def with_defaults(suite: Path, lines: list[str]) -> Path:
    """A copy of `suite` beside it (its relative paths still resolve) with `lines` at the top of its [defaults] table."""
    text = suite.read_text(encoding="utf-8")
    if "\n[defaults]\n" not in text:
        raise SystemExit(f"{suite}: no [defaults] table to add {lines} to")
    text = text.replace("\n[defaults]\n", "\n[defaults]\n" + "".join(f"{line}\n" for line in lines), 1)
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # a key the table has already, a line that is not TOML
        raise SystemExit(f"{suite}: [defaults] + {lines} is not a suite: {exc}") from None
    copy = suite.with_name(f"{suite.stem}-after-defaults.toml")
    copy.write_text(text, encoding="utf-8")
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--suite", default="suites/quickstart.toml")
    parser.add_argument("--same-suite", action="store_true", help="run the before commit's suite file at both commits")
    parser.add_argument("--after-args", default="", help="extra arguments for the after commit's bench run")
    parser.add_argument("--after-defaults", nargs="*", default=[], metavar="LINE",
                        help="TOML lines added to [defaults] in the after side's copy of the suite file")
    args = parser.parse_args()
    trees = {}
    for name, rev in (("before", args.before), ("after", args.after)):
        tree = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), rev], cwd=REPO, check=True)
        trees[name] = tree
    walls: dict[str, list[float]] = {"before": [], "after": []}
    suite = {name: str(trees["before"] / args.suite) if args.same_suite else args.suite for name in trees}
    extra = {"before": [], "after": args.after_args.split()}
    try:
        if args.after_defaults:  # the copy lives in a worktree (its relative paths resolve there), removed at the end
            if Path(args.suite).is_absolute():
                raise SystemExit("--after-defaults: give --suite as a path inside the repository")
            suite["after"] = str(with_defaults(Path(suite["after"] if args.same_suite else trees["after"] / args.suite),
                                               args.after_defaults))
            print(f"after side: {suite['after']} ([defaults] + {'; '.join(args.after_defaults)})")
        for name in ("before", "after"):
            run(trees[name], suite[name], extra[name])  # untimed: the zoo cached for this commit, the page cache warm
        for r in range(args.rounds):
            for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
                wall, split = run(trees[name], suite[name], extra[name])
                walls[name].append(wall)
                # side by side the wall time some cell trained is said first; one at a time training's own line
                share = split.split("training ", 1)[1].split("(", 1)[1].split(")", 1)[0] if "training " in split else "?"
                print(f"{name:<6} {wall:6.1f} s  training {share} of the run's own wall  |  {split}")
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)
    before, after = statistics.median(walls["before"]), statistics.median(walls["after"])
    print(f"median wall: before {before:.1f} s ({args.before}), after {after:.1f} s ({args.after}): ratio {after / before:.3f}")


if __name__ == "__main__":
    main()
