"""Hostile inputs: how many entries each case tries, how many the run survives (good files indexed, plus bad ones
named with a reason), how many are lost (good files not indexed, or everything when the run dies), and the peak RSS.

    python benchmarks/bench_reliability.py [--before REV] [--cases NAME ...] [--cap-gib 6]

Every case runs in its own subprocess (``--worker``), once with this checkout ("after") and, with ``--before REV``,
once with the xsearch of git revision REV (extracted with ``git archive`` into a temp folder: "before"). Peak RSS is
the child's ``ru_maxrss`` (from ``os.wait4``); it includes loading the encoder (the "baseline" row: three good
files). Children run under an address-space cap (``--cap-gib`` above what the imports take) so a runaway
allocation fails instead of taking the machine down; such a run counts as died.

``CASES`` is data: one row per case, ``kind`` selects the worker action ("index": ``Collection.add`` on the built
folder, a test hook may delete/rewrite files mid-run (older code has no hook: its rows say
"hook not run"); "resample": the audio resampler alone on a 2 s tone). New
kinds (kill points, concurrent writers) add a row and a worker function to ``ACTIONS``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]
import hostile  # noqa: E402
from _common import machine, table  # noqa: E402


@dataclass(frozen=True)
class Case:
    """One row: ``files`` maps names to bytes (or a builder for special entries); ``good`` must be indexed."""

    name: str
    kind: str = "index"
    good: tuple[bytes, ...] = ()
    bad: tuple[bytes, ...] = ()
    special: Callable[[Path], None] | None = None
    hook: str | None = None  # a TEST_HOOK recipe the worker installs (see HOOKS)
    rate: int = 0  # for "resample"
    extra: dict = field(default_factory=dict)


BASE = (b"red.png", b"blue.jpg", b"tone16k.wav")


def _fifo_socket(root: Path) -> None:
    import socket

    b = os.fsencode(root)
    os.mkfifo(os.path.join(b, b"pipe.wav"))
    os.mkfifo(os.path.join(b, b"pipe.jpg"))
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(b, b"sock.wav"))
    s.close()


def _links(root: Path) -> None:
    b = os.fsencode(root)
    os.symlink(b"loop2.jpg", os.path.join(b, b"loop1.jpg"))
    os.symlink(b"loop1.jpg", os.path.join(b, b"loop2.jpg"))
    os.symlink(b"nowhere.png", os.path.join(b, b"dangling.png"))
    os.symlink(b".", os.path.join(b, b"self"))


def _perms(root: Path) -> None:
    for folder, mode in ((b"noexec", 0o444), (b"closed", 0o000)):
        hostile.write(root, folder + b"/inside.png", hostile.png())
        os.chmod(os.path.join(os.fsencode(root), folder), mode)


def _changing(root: Path) -> None:
    hostile.write(root, b"vanish.png", hostile.png(color=(1, 2, 3)))
    hostile.write(root, b"swap.jpg", hostile.jpeg(color=(250, 250, 250)))


CASES: list[Case] = [
    Case("baseline (3 good files)", good=BASE),
    Case("non-UTF-8 names (good files)", good=BASE + (b"caf\xe9.jpg", b"na\xefve notes.txt", b"sub/\xff\xfe folder/yellow.png")),
    Case("zero-byte files (6 types)", good=BASE, bad=tuple(n for n in hostile.BAD if n.startswith(b"zero."))),
    Case("truncated files", good=BASE, bad=(b"cut.jpg", b"cut.png", b"cut.wav")),
    Case("garbage bytes (5 types + non-UTF-8 name)", good=BASE,
         bad=tuple(n for n in hostile.BAD if n.startswith((b"garbage.", b"gar\xe7on")))),
    Case("decompression bomb PNG (81 Mpixels)", good=BASE, bad=(b"bomb.png",)),
    Case("PNG declaring 10 Gpixels", good=BASE, bad=(b"huge.png",)),
    Case("NaN / inf WAVs", good=BASE, bad=(b"nan.wav", b"inf.wav")),
    Case("FIFOs and a socket", good=BASE, special=_fifo_socket, extra={"bad": 3}),
    Case("symlink loops, dangling link, folder loop", good=BASE, special=_links, extra={"bad": 3}),
    Case("r-- and 000 folders", good=BASE, special=_perms, extra={"perm": 2}),
    Case("deleted / replaced during the run (hook)", good=BASE, special=_changing, hook="change", extra={"changing": 2}),
    Case("odd-rate WAVs 4001/8001/44101 Hz", good=BASE + (b"odd4001.wav", b"odd8001.wav", b"odd44101.wav")),
    Case("everything above in one folder", kind="all", hook="change"),
    Case("resample 2 s at 4001 Hz", kind="resample", rate=4001),
    Case("resample 2 s at 8001 Hz", kind="resample", rate=8001),
    Case("resample 2 s at 44101 Hz", kind="resample", rate=44101),
    Case("resample 2 s at 44100 Hz (common)", kind="resample", rate=44100),
]


# ---- worker side (runs in the child, with whichever xsearch is on sys.path) ------------------------------
def _hook_change(folder: Path):
    seen: set[str] = set()

    def hook(event: str, path: str) -> None:
        name = os.fsencode(path).rsplit(b"/", 1)[-1]
        if event == "open" and name == b"vanish.png" and os.path.exists(path):
            os.unlink(path)
        if event == "decoded" and name == b"swap.jpg" and path not in seen:
            seen.add(path)
            hostile.write(folder, b"swap.tmp", hostile.jpeg(color=(9, 9, 9), w=64))
            os.replace(os.path.join(os.fsencode(folder), b"swap.tmp"), os.fsencode(path))
    return hook


HOOKS = {"change": _hook_change}


def _cap(gib: float) -> None:
    import resource

    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmPeak")) * 1024
    limit = peak + int(gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def work_index(args: argparse.Namespace) -> dict:
    from xsearch import media
    from xsearch.engine import Collection

    folder = Path(args.folder)
    col = Collection.open(args.home, "bench", create=True)
    if args.hook:
        media.TEST_HOOK = HOOKS[args.hook](folder)  # an older xsearch ignores it (it has no hook)
    _cap(args.cap_gib)
    report = col.add([folder])
    paths = {r.path for r in col.store.rows()}
    col.close()
    return {"indexed": sorted(paths), "skipped": [p for p, _ in report.skipped]}


def work_resample(args: argparse.Namespace) -> dict:
    import numpy as np

    from xsearch.encoders.audio import resample

    sr = args.rate
    t = np.arange(2 * sr) / sr
    _cap(args.cap_gib)
    y = resample((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, 16000)
    return {"samples": int(len(y))}


ACTIONS = {"index": work_index, "all": work_index, "resample": work_resample}


# ---- parent side ------------------------------------------------------------------------------------
def build(case: Case, folder: Path) -> tuple[int, list[str]]:
    """Write the case's folder; return (entries tried, absolute paths of the good files)."""
    if case.kind == "all":
        h = hostile.build(folder)
        _changing(folder)
        good = [h.path(n) for n in h.good] + [h.path(b"swap.jpg")]
        return len(h.good) + len(h.bad) + 2, good
    for name in case.good:
        hostile.write(folder, name, hostile.GOOD[name]())
    for name in case.bad:
        hostile.write(folder, name, hostile.BAD[name][0]())
    if case.special:
        case.special(folder)
    good = [os.fsdecode(os.path.join(os.fsencode(folder.resolve()), n)) for n in case.good]
    extra = case.extra
    if extra.get("changing"):
        good.append(str(folder.resolve() / "swap.jpg"))
    if extra.get("perm") and os.geteuid() == 0:  # root reads r-- and 000 folders: their files are good
        good += [str(folder.resolve() / d / "inside.png") for d in ("noexec", "closed")]
    tried = len(case.good) + len(case.bad) + extra.get("bad", 0) + extra.get("perm", 0) + extra.get("changing", 0)
    return tried, good


def run_case(case: Case, pythonpath: str, cap_gib: float) -> dict:
    """Run one case in a child; return tried/survived/lost/peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        tried, good = (1, []) if case.kind == "resample" else build(case, folder)
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, __file__, "--worker", case.kind, "--folder", str(folder), "--home", str(Path(tmp) / "home"),
               "--out", str(out), "--rate", str(case.rate), "--cap-gib", str(cap_gib)] + (["--hook", case.hook] if case.hook else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([pythonpath, str(ROOT / "tests")]), "XSEARCH_WORKERS": "0"}
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stderr = proc.stderr.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        hostile.restore_permissions(folder)
        died = proc.returncode != 0 or not out.exists()
        result = {} if died else json.loads(out.read_text())
    if case.kind == "resample":
        survived = int(not died)
        lost = 1 - survived
    else:
        indexed = set(result.get("indexed", []))
        lost = sum(g not in indexed for g in good)
        named = min(len(result.get("skipped", [])), tried - len(good))
        survived = 0 if died else len(good) - lost + named
    last = stderr.strip().splitlines()[-1] if died and stderr.strip() else ""
    last = re.sub(r"\[enforce fail .*?\] err == 0\. DefaultCPUAllocator: ", "", last)[:90].replace("|", "/")
    return {"tried": tried, "survived": survived, "lost": lost, "rss_mb": usage.ru_maxrss / 1024, "s": seconds,
            "died": last}


def before_tree(rev: str, dest: Path) -> str:
    """``xsearch/`` of git revision ``rev`` extracted under ``dest``; returns the PYTHONPATH entry."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "xsearch"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return str(dest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default=None, help="git revision to compare with (e.g. the commit before the fixes)")
    ap.add_argument("--cases", nargs="*", default=None, help="substrings of case names to run")
    ap.add_argument("--cap-gib", type=float, default=6.0, help="address space each child may use above its imports")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    for name in ("--folder", "--home", "--out", "--hook"):
        ap.add_argument(name, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        Path(args.out).write_text(json.dumps(ACTIONS[args.worker](args)))
        return
    cases = [c for c in CASES if not args.cases or any(s in c.name for s in args.cases)]
    print(f"machine: {machine()}; user {'root' if os.geteuid() == 0 else 'not root'}; "
          f"load {os.getloadavg()[0]:.1f}; cap {args.cap_gib} GiB above imports\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        trees = [("after", str(ROOT))] + ([(f"before ({args.before})", before_tree(args.before, Path(tmp)))]
                                           if args.before else [])
        for case in cases:
            for label, path in trees:
                r = run_case(case, path, args.cap_gib)
                if case.hook and label != "after":  # older code has no test hook: nothing changes mid-run there
                    label += ", hook not run"
                rows.append([case.name, label, r["tried"], r["survived"], r["lost"], f"{r['rss_mb']:.0f}",
                             f"{r['s']:.1f}", r["died"] or "-"])
                print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
    print(table(["case", "code", "tried", "survived", "lost", "peak RSS MB", "s", "run died with"], rows))


if __name__ == "__main__":
    main()
