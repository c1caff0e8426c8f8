"""Where a compiled XLA program spends its time, by source location: a ``jax.profiler`` trace of a few calls,
each executed HLO instruction's *self* time, mapped to the ``op_name`` metadata XLA keeps from the JAX
trace (``jit(step)/transpose(jvp(DiT))/blocks_3/attn/q_norm/...``) and summed per model part.

  python -m launch.bench profile [--quick]      # the DiT and U-Net train steps of the benchmark

Used by ``launch/bench.py`` (``profile`` suite). CPU traces hold one event per executed thunk (named after its
HLO instruction: ``dot.174``, ``loop_fusion.3``, ``while.7``); nested events (a ``while`` and its body) are
counted once, as self time. A part is ``<pass> <module path>``: pass ``fwd`` (the forward), ``bwd`` (under
``transpose(...)``: the backward), ``update`` (outside the model: loss, optimizer, EMA); block indices are
folded (``blocks_3`` -> ``blocks_*``), so a part sums over the repeated blocks.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
from typing import Any, Callable

_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = .*?metadata=\{[^}]*?op_name="([^"]*)"')
_NAME = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = ')
_WRAPPERS = re.compile(r"^(jit|pjit|jvp|transpose|vmap|remat|checkpoint|rematted_computation)\((.*)\)$")
_INDEX = re.compile(r"(?<=_)\d+(?=/|$)")


def hlo_op_names(hlo_text: str) -> dict[str, str]:
    """HLO text (``compiled.as_text()``) -> {instruction name: op_name metadata} for every instruction that has
    one; a fusion without its own metadata gets its fused root's."""
    out: dict[str, str] = {}
    roots: dict[str, str] = {}
    calls: dict[str, str] = {}
    comp = None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+) .*\{\s*$", line)
        if head and "=" not in line.split("{")[0]:
            comp = head.group(1)
            continue
        m = _INSTR.match(line)
        if m:
            out[m.group(1)] = m.group(2)
            if line.lstrip().startswith("ROOT") and comp:
                roots[comp] = m.group(2)
        n = _NAME.match(line)
        c = re.search(r"calls=%?([\w.\-]+)", line)
        if n and c:
            calls[n.group(1)] = c.group(1)
    for name, comp_name in calls.items():
        if name not in out and comp_name in roots:
            out[name] = roots[comp_name]
    return out


def part_of(op_name: str, model_names: tuple[str, ...]) -> str:
    """An op_name -> ``"<pass> <module path>"`` (see the module docstring). ``model_names``: the Flax module class
    names that mark the model (``("DiT",)``); anything outside them is the ``update`` pass."""
    segs = [s for s in op_name.split("/") if s]
    backward = any(s.startswith("transpose(") for s in segs)
    path, inside = [], False
    for s in segs:
        inner = s
        while True:
            w = _WRAPPERS.match(inner)
            if not w:
                break
            inner = w.group(2)
        if inner in model_names:
            inside = True
            continue
        if inside and inner == s and re.match(r"^[A-Za-z_][\w]*$", s):
            path.append(_INDEX.sub("*", s))
    if not inside:
        return "update"
    mod = "/".join(path[:-1]) if len(path) > 1 else (path[0] if path else "")
    return f"{'bwd' if backward else 'fwd'} {mod or '(top)'}"


_CONTAINER = re.compile(r"^(((in|out|down|up)_)?blocks_\*|mid_block)$")


def layer_of(part: str) -> str:
    """A part -> the same part summed over block positions: container segments (``in_blocks_*``,
    ``down_blocks_*``, ``mid_block``, ...) dropped (``bwd out_blocks_*/attn`` -> ``bwd attn``)."""
    pas, _, path = part.partition(" ")
    if not path:
        return part
    segs = [s for s in path.split("/") if not _CONTAINER.match(s)]
    return f"{pas} {'/'.join(segs) or path}"


def primitive_of(op_name: str) -> str:
    """The JAX primitive at the end of an op_name (``.../to_q/dot_general`` -> ``dot_general``)."""
    last = op_name.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"\(.*$", "", last) or last


def _self_times(events: list[dict]) -> dict[str, float]:
    """Complete ('X') trace events -> {name: summed self time in us} (children on the same thread subtracted)."""
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            by_thread[(e.get("pid"), e.get("tid"))].append(e)
    out: dict[str, float] = collections.defaultdict(float)
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[list] = []      # [end, name, child time]
        for e in evs:
            while stack and e["ts"] >= stack[-1][0] - 1e-3:
                end, name, child, dur = stack.pop()
                out[name] += dur - child
            if stack:
                stack[-1][2] += e["dur"]
            stack.append([e["ts"] + e["dur"], e["name"], 0.0, e["dur"]])
        while stack:
            end, name, child, dur = stack.pop()
            out[name] += dur - child
    return out


def trace_calls(run: Callable[[], Any], calls: int, trace_dir: str | None = None) -> tuple[list[dict], float]:
    """Runs ``run()`` ``calls`` times under ``jax.profiler.trace`` -> (the perfetto trace's events, wall seconds
    of the calls themselves, traced)."""
    import time

    import jax

    tmp = trace_dir or tempfile.mkdtemp(prefix="tta_jax_xprof_")
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
        t0 = time.perf_counter()
        for _ in range(calls):
            jax.block_until_ready(run())
        wall = time.perf_counter() - t0
    files = sorted(glob.glob(os.path.join(tmp, "**", "perfetto_trace.json.gz"), recursive=True))
    if not files:
        raise RuntimeError(f"launch/xprof.py: jax.profiler wrote no perfetto trace under {tmp}")
    with gzip.open(files[-1]) as f:
        data = json.load(f)
    return (data["traceEvents"] if isinstance(data, dict) else data), wall


def profile(compiled, run: Callable[[], Any], model_names: tuple[str, ...], calls: int = 3,
            top: int = 12, trace_dir: str | None = None) -> dict:
    """Per-call self time of ``compiled``'s HLO instructions while ``run()`` (which calls it) runs ``calls``
    times. -> {"calls", "total_ms" (per call, every instruction), "parts": [{part, ms, frac}] descending,
    "layers": the parts summed over block positions (:func:`layer_of`), "primitives": pass x JAX primitive,
    "ops": the ``top`` instructions [{op, part, op_name, ms}], "wall_ms": wall time per traced call}."""
    names = hlo_op_names(compiled.as_text())
    events, wall = trace_calls(run, calls, trace_dir)
    wall_ms = wall / calls * 1e3
    times = _self_times(events)
    ops = {k: v / calls / 1e3 for k, v in times.items() if k in names}
    total = sum(ops.values())
    parts: dict[str, float] = collections.defaultdict(float)
    for k, ms in ops.items():
        parts[part_of(names[k], model_names)] += ms
    layers: dict[str, float] = collections.defaultdict(float)
    for p, ms in parts.items():
        layers[layer_of(p)] += ms
    prims: dict[str, float] = collections.defaultdict(float)
    for k, ms in ops.items():
        prims[f"{part_of(names[k], model_names).split()[0]} {primitive_of(names[k])}"] += ms
    ranked = sorted(parts.items(), key=lambda kv: -kv[1])
    top_ops = sorted(ops.items(), key=lambda kv: -kv[1])[:top]
    return {"calls": calls, "total_ms": total, "wall_ms": wall_ms,
            "parts": [{"part": p, "ms": ms, "frac": ms / total if total else 0.0} for p, ms in ranked],
            "layers": [{"layer": p, "ms": ms, "frac": ms / total if total else 0.0}
                       for p, ms in sorted(layers.items(), key=lambda kv: -kv[1])],
            "primitives": [{"primitive": p, "ms": ms, "frac": ms / total if total else 0.0}
                           for p, ms in sorted(prims.items(), key=lambda kv: -kv[1])],
            "ops": [{"op": k, "part": part_of(names[k], model_names), "op_name": names[k], "ms": ms}
                    for k, ms in top_ops]}


def print_profile(title: str, prof: dict, parts: int = 8) -> None:
    """The largest ``layers`` (parts summed over block positions) and pass x primitive shares."""
    wall = f", {prof['wall_ms']:.1f} ms wall per traced call" if prof.get("wall_ms") else ""
    print(f"{title}: {prof['total_ms']:.1f} ms of XLA op self time per call (summed over threads"
          f"{wall}; {prof['calls']} calls traced)")
    for p in prof["layers"][:parts]:
        print(f"  {100 * p['frac']:5.1f}%  {p['ms']:8.2f} ms  {p['layer']}")
    print("  by pass and primitive: " + ", ".join(f"{p['primitive']} {100 * p['frac']:.0f}%"
                                                   for p in prof["primitives"][:parts]))
