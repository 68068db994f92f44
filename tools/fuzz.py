"""A long fuzz campaign over every model reader: ONNX, TFLite and qatir's own .qatir files.

Cases come from the frontends' own mutators (``tests/test_fuzz_onnx.py`` and
``tools/fuzz_tflite.py``) plus a .qatir mutator defined here (edits of
``graph.json``, hostile ``.npy`` headers, byte flips, cut tails). Every case must
end in success or a ``QatirError`` within a time bound; anything else is a crash,
running past the bound a hang. With ``--deep`` a model that imports is also run
through ``qatir.quantize`` and ``qatir.to_tflite`` (and the result through LiteRT,
in a child process with its own ``LITERT_SECONDS`` allowance, since a mutated input
dim can make a valid model too big to run quickly), so bugs past the frontend show too.

    python tools/fuzz.py --minutes 5 [--deep] [--only onnx,tflite,qatir] [--seed 0]

Prints, per frontend: cases tried, outcomes by class, the slowest case, the case
that grew the process's peak memory most, and each distinct crash with a
traceback excerpt. Exit status 1 when any crash or hang was found.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import json
import os
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

Case = tuple[bytes, str]  # model bytes, description of the mutations


# ------------------------------------------------------------------ per-frontend case sources
def _tool(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_qatir_tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def onnx_cases(seed: int) -> Iterator[Case]:
    from tests.test_fuzz_onnx import mutate, seed_models

    rng = np.random.default_rng(seed)
    seeds = seed_models()
    while True:
        yield mutate(rng, seeds)


def tflite_cases(seed: int) -> Iterator[Case]:
    ft = _tool("fuzz_tflite")
    with contextlib.redirect_stdout(sys.stderr):  # the TF converter chats on stdout
        seeds = ft.seed_models()
    names = sorted(seeds)
    i = 0
    while True:
        rng = random.Random(seed * 1_000_003 + i)
        base = names[i % len(names)]
        buf, desc = ft.mutate(seeds[base], rng)
        yield buf, f"{base}: {desc}"
        i += 1


# .qatir: a zip of graph.json + one .npy per constant
HOSTILE_VALUES: list[Any] = [None, -1, 0, 1, 2**31, 2**40, -(2**63), 1e308, "", "x" * 300, [],
                             {}, [None], [2**40, 2**40], [-1, -1], "NaN", True]
HOSTILE_SHAPES = [(1 << 40, 4), (1 << 31,), (-1, 4), (0,), (2**62, 2**62), (3, 4, 5), ()]
HOSTILE_DESCR = ["<f8", "<i4", "|b1", "<c8", "|u1", "<f2", "|O", ">f4", "<U4", "|V16"]


def qatir_seed_models() -> dict[str, bytes]:
    """A float and a quantized graph saved as .qatir bytes."""
    import qatir
    from qatir.ir import Graph
    from qatir.serialize import save_qatir_bytes

    rng = np.random.default_rng(0)
    g = Graph("seed")
    x = g.add_input("x", [1, 6, 6, 3])
    y = g.add_node("CONV_2D", [x, g.const(rng.normal(0, .3, (4, 3, 3, 3)).astype(np.float32), "w0"),
                               g.const(np.zeros(4, np.float32), "b0")], {"padding": "SAME"},
                   name="conv").output
    y = g.add_node("RELU", [y], name="relu").output
    y = g.add_node("RESHAPE", [y], {"new_shape": [1, 144]}, name="flat").output
    y = g.add_node("FULLY_CONNECTED", [y, g.const(rng.normal(0, .1, (5, 144)).astype(np.float32),
                                                  "w1")], name="fc", outputs=["out"]).output
    g.outputs = [y]
    return {"float": save_qatir_bytes(g), "quantized": save_qatir_bytes(qatir.quantize(g))}


def _members(buf: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(buf)) as z:
        return {n: z.read(n) for n in z.namelist()}


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for n, d in members.items():
            z.writestr(n, d)
    return out.getvalue()


def _json_edit(doc: Any, rng: random.Random) -> str:
    """Replace, delete or duplicate one randomly chosen entry somewhere in the JSON tree."""
    path: list[Any] = []
    node = doc
    while isinstance(node, (dict, list)) and node and (not path or rng.random() < 0.75):
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append(key)
        parent, node = node, node[key]
    if not path:
        return "noop"
    key = path[-1]
    what = rng.random()
    if what < 0.6:
        parent[key] = copy.deepcopy(rng.choice(HOSTILE_VALUES))
        return f"json {'/'.join(map(str, path))}={parent[key]!r:.40}"
    if what < 0.8:
        del parent[key]
        return f"json del {'/'.join(map(str, path))}"
    if isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
        return f"json dup {'/'.join(map(str, path))}"
    parent[key] = node
    return "noop"


def _npy_header(rng: random.Random) -> bytes:
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": rng.choice(HOSTILE_DESCR),
                                               "fortran_order": rng.random() < 0.2,
                                               "shape": rng.choice(HOSTILE_SHAPES)})
    return hdr.getvalue() + bytes(rng.randrange(64))


def qatir_mutate(buf: bytes, rng: random.Random) -> Case:
    """One .qatir fuzz case."""
    members = _members(buf)
    kind = rng.random()
    if kind < 0.45:
        doc = json.loads(members["graph.json"])
        descs = [_json_edit(doc, rng) for _ in range(rng.randint(1, 3))]
        members["graph.json"] = json.dumps(doc).encode()
        return _zip(members), "; ".join(descs)
    if kind < 0.7:
        names = [n for n in members if n.endswith(".npy")]
        if names:
            name = rng.choice(names)
            members[name] = _npy_header(rng)
            return _zip(members), f"npy header of {name}"
    if kind < 0.85:
        cut = rng.randrange(len(buf))
        return buf[:cut], f"cut at {cut}"
    data = bytearray(buf)
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data), "byte flips"


def qatir_cases(seed: int) -> Iterator[Case]:
    seeds = qatir_seed_models()
    names = sorted(seeds)
    i = 0
    while True:
        rng = random.Random(seed * 7_919 + i)
        base = names[i % len(names)]
        try:
            buf, desc = qatir_mutate(seeds[base], rng)
        except (ValueError, TypeError, KeyError, zipfile.BadZipFile) as e:  # the mutator's own
            buf, desc = seeds[base][: rng.randrange(len(seeds[base]))], f"cut (mutator: {e})"
        yield buf, f"{base}: {desc}"
        i += 1


SOURCES: dict[str, tuple[Callable[[int], Iterator[Case]], str]] = {
    "onnx": (onnx_cases, ".onnx"), "tflite": (tflite_cases, ".tflite"), "qatir": (qatir_cases, ".qatir"),
}


# ------------------------------------------------------------------ running one case
class _Timeout(BaseException):
    """Raised by the alarm: derives from BaseException so `except Exception` cannot swallow it."""


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout()


class LiteRTFailure(Exception):
    """LiteRT refused or crashed on a model qatir wrote (a writer bug, not a user error)."""


#: Where --deep keeps the .tflite files LiteRT failed on (set by main).
CRASH_DIR: Path | None = None


#: Seconds LiteRT may take to load and run one exported model (outside the per-case limit,
#: which bounds qatir's own work; a mutated input dim can make a valid model huge).
LITERT_SECONDS = 30.0


def _run_litert_isolated(buf: bytes) -> bool:
    """Load and invoke ``buf`` in a forked child: an abort in LiteRT kills the child only.
    False when LiteRT ran past ``LITERT_SECONDS`` (the model is valid but too large)."""
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            from ai_edge_litert.interpreter import Interpreter

            it = Interpreter(model_content=buf, num_threads=1)
            it.allocate_tensors()
            for d in it.get_input_details():
                it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
            it.invoke()
        except BaseException as e:  # noqa: BLE001 - reported through the exit status
            sys.stderr.write(f"LiteRT: {type(e).__name__}: {str(e)[:300]}\n")
            code = 3
        os._exit(code)
    deadline = time.monotonic() + LITERT_SECONDS
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:  # a huge (valid) model: LiteRT's time, not qatir's
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return False
            time.sleep(0.002)
    except BaseException:  # an interrupt: do not leave the child behind
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    if os.WIFSIGNALED(status):
        problem = f"LiteRT died of signal {os.WTERMSIG(status)}"
    elif os.WEXITSTATUS(status) != 0:
        problem = "LiteRT refused the model (see stderr)"
    else:
        return True
    if CRASH_DIR is not None:
        CRASH_DIR.mkdir(parents=True, exist_ok=True)
        out = CRASH_DIR / f"litert_{len(list(CRASH_DIR.glob('*.tflite'))):04d}.tflite"
        out.write_bytes(buf)
        problem += f"; model kept in {out}"
    raise LiteRTFailure(problem)


def _deep(graph: Any) -> str:
    """Quantize and export a model that imported; run the result in LiteRT (isolated)."""
    import qatir

    q = qatir.quantize(graph)
    buf = qatir.to_tflite(q)
    signal.setitimer(signal.ITIMER_REAL, 0)  # the per-case limit is for qatir's stages
    return "ok+export" if _run_litert_isolated(buf) else "ok+export (LiteRT run too slow)"


def classify(path: str, time_limit: float, deep: bool) -> tuple[str, str]:
    """Load ``path`` (and with ``deep`` quantize/export it): (outcome class, detail)."""
    import qatir
    from qatir.errors import QatirError

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    stage = "import"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = qatir.load(path)
            str(g)
            if not deep:
                return "ok", ""
            stage = "export"
            return _deep(g), ""
    except _Timeout:
        return f"HANG ({stage})", f"ran past {time_limit} s"
    except QatirError as e:
        return (type(e).__name__ if stage == "import" else f"export: {type(e).__name__}"), str(e)
    except Exception as e:  # noqa: BLE001 - a crash is what the campaign looks for
        return f"CRASH ({stage}) {type(e).__name__}", traceback.format_exc(limit=-6)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _qatir_frame(tb: str) -> str:
    """The innermost qatir source line of a traceback: crashes are grouped by where they escape."""
    frames = [ln.strip() for ln in tb.splitlines() if ln.strip().startswith("File ")]
    ours = [f for f in frames if "/qatir/" in f or "/passes/" in f]
    return (ours or frames or ["?"])[-1]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class Stats:
    """Outcomes of one frontend's campaign."""

    cases: int = 0
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)
    slowest: tuple[float, str] = (0.0, "")
    rss_jump: tuple[float, str] = (0.0, "")
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (desc, detail)
    failure_count: int = 0


def campaign(names: list[str], seed: int, seconds: float, max_cases: int | None, time_limit: float,
             deep: bool) -> dict[str, Stats]:
    """Round-robin the frontends until the time or the case budget is spent."""
    sources = {n: SOURCES[n][0](seed) for n in names}
    stats = {n: Stats() for n in names}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        while time.perf_counter() - start < seconds:
            active = [n for n in names if max_cases is None or stats[n].cases < max_cases]
            if not active:
                break
            for name in active:
                st = stats[name]
                data, desc = next(sources[name])
                label = f"{name} #{st.cases} ({desc})"
                path = os.path.join(d, "case" + SOURCES[name][1])
                with open(path, "wb") as f:
                    f.write(data)
                rss0, t0 = _rss_mib(), time.perf_counter()
                outcome, detail = classify(path, time_limit, deep)
                dt, grew = time.perf_counter() - t0, _rss_mib() - rss0
                st.cases += 1
                st.seconds += dt
                st.outcomes[outcome] += 1
                if dt > st.slowest[0]:
                    st.slowest = (dt, label)
                if grew > st.rss_jump[0]:
                    st.rss_jump = (grew, label)
                if outcome.startswith(("CRASH", "HANG")):
                    st.failure_count += 1
                    key = f"{outcome} at {_qatir_frame(detail)}"
                    st.failures.setdefault(key, (label, detail))
    return stats


def report(stats: dict[str, Stats], wall: float) -> int:
    """Print the figures; returns the number of crashes and hangs."""
    total = 0
    print(f"campaign wall time {wall:.1f} s, peak RSS {_rss_mib():.0f} MiB")
    for name, st in stats.items():
        print(f"\n== {name}: {st.cases} cases in {st.seconds:.1f} s "
              f"({st.cases / max(st.seconds, 1e-9):.0f}/s)")
        print("outcomes by class:")
        for kind, n in st.outcomes.most_common():
            print(f"  {kind:<40} {n:7d}")
        print(f"slowest case: {st.slowest[0] * 1000:.1f} ms: {st.slowest[1][:200]}")
        print(f"largest peak-memory growth: {st.rss_jump[0]:.0f} MiB: {st.rss_jump[1][:200]}")
        print(f"crashes/hangs: {st.failure_count} ({len(st.failures)} distinct)")
        for key, (label, detail) in st.failures.items():
            print(f"--- {key}\n    first: {label[:300]}\n{detail[-1500:]}")
        total += st.failure_count
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget")
    ap.add_argument("--cases", type=int, default=None, help="stop each frontend after this many")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds allowed per case")
    ap.add_argument("--only", default="onnx,tflite,qatir", help="comma-separated frontends")
    ap.add_argument("--deep", action="store_true", help="also quantize, export and run in LiteRT")
    ap.add_argument("--crash-dir", default=os.path.join(tempfile.gettempdir(), "qatir_fuzz_crashes"),
                    help="--deep: keep models LiteRT failed on here")
    args = ap.parse_args(argv)
    global CRASH_DIR
    CRASH_DIR = Path(args.crash_dir)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SOURCES))
    if unknown:
        ap.error(f"unknown frontend(s) {unknown}; choose from {sorted(SOURCES)}")
    t0 = time.perf_counter()
    stats = campaign(names, args.seed, 60 * args.minutes, args.cases, args.time_limit, args.deep)
    return 1 if report(stats, time.perf_counter() - t0) else 0


if __name__ == "__main__":
    sys.exit(main())
