"""One traced fake-quant program of a quantized graph whose FAKE_QUANTs are switched at run
time, so :func:`qatir.analyze` evaluates every configuration without retracing.

A *configuration* is a pair of 0/1 vectors over the graph's FAKE_QUANTs, ``g8`` and ``g16``;
a FAKE_QUANT computes ``y = x + g8·(fq8(x) − x) + g16·(fq16(x) − x)`` (``fq16``: 16-bit
symmetric, for per-tensor activations only, as :mod:`qatir.int16` runs them).

:meth:`Gated.run_many` runs many configurations on all the calibration feeds as one batch
(configurations × feeds samples) through a copy of the graph with a dynamic batch
dimension. Activation gates are per sample. A weight gate is not (a per-sample filter
would be a loop): a weight FAKE_QUANT outputs the batch's common choice, and a node reading
one also runs, on the samples whose gate differs from it (none unless the weight's gate
differs inside the batch), with the quantized weight. A 16-bit fake-quant runs on the
samples that ask for it only. The batched program is checked against single-feed calls on
the first feed; where the graph cannot take a dynamic batch, or the check fails, one
configuration on one feed runs per call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from qatir.errors import QatirError
from qatir.ir import Graph, Node
from qatir.tf.env import import_tensorflow

tf = import_tensorflow()

#: samples (configurations × feeds) one batched call runs at most
MAX_SAMPLES = 16
#: bytes one batched call may hold live: :func:`peak_bytes` of a sample × samples
MAX_BATCH_BYTES = 3 << 30
#: what a gated FAKE_QUANT holds beyond the graph's own values (its input, the fake-quant,
#: the gated sum and, for 16-bit samples, a gathered copy): peak bytes are multiplied by it
GATE_COPIES = 3
#: the batched program must match single-feed calls to this SQNR (dB) or is not used
CHECK_DB = 50.0

Config = tuple[np.ndarray, np.ndarray]


def peak_bytes(q: Graph) -> int:
    """The most activation bytes of one sample alive at once when ``q`` runs in node order
    (a value lives from its producer to its last reader; graph outputs to the end), times
    :data:`GATE_COPIES`. Summing every value instead overstates a deep network many times
    (EfficientNetV2-S: 4 samples a call where 16 fit)."""
    def size(t) -> int:
        if t is None or t.is_const or not all(isinstance(d, int) for d in t.shape):
            return 0
        return int(np.prod(t.shape)) * t.dtype.itemsize

    last: dict[int, int] = {}  # value -> index of the node after which it is dead
    for i, node in enumerate(q.nodes):
        for t in node.inputs:
            if t is not None:
                last[id(t)] = i
    for t in q.outputs:
        last[id(t)] = len(q.nodes)
    dying: dict[int, int] = {}
    for i, node in enumerate(q.nodes):
        for t in node.outputs:
            if t is not None:
                j = last.get(id(t), i)
                dying[j] = dying.get(j, 0) + size(t)
    live = sum(size(t) for t in q.inputs)
    peak = live
    for t in q.inputs:
        j = last.get(id(t), 0)
        dying[j] = dying.get(j, 0) + size(t)
    for i, node in enumerate(q.nodes):
        live += sum(size(o) for o in node.outputs)
        peak = max(peak, live)
        live -= dying.get(i, 0)
    return peak * GATE_COPIES


def _dynamic_batch(q: Graph) -> Graph | None:
    """A copy of ``q`` whose inputs (and so every value) have a dynamic batch dimension,
    or None when its inputs are not batch-1 or its shapes do not infer that way."""
    if not q.inputs or any(t.rank == 0 or t.shape[0] != 1 for t in q.inputs):
        return None
    qb = q.clone()
    try:
        for t in qb.inputs:
            t.shape = (None, *t.shape[1:])
        for node in qb.nodes:
            qb.reinfer(node)
        qb.verify()
    except (QatirError, ValueError, TypeError, IndexError):
        return None
    return qb


class Gated:
    """The gated program of a quantized, calibrated graph ``q`` on fixed ``feeds``
    (``batched=False``: one configuration on one feed per call)."""

    def __init__(self, q: Graph, feeds: list[Mapping[str, np.ndarray]],
                 max_samples: int = MAX_SAMPLES, batched: bool = True):
        from qatir.feeds import check_feeds

        self.q = q
        self.fqs = [n for n in q.nodes if n.op == "FAKE_QUANT"]
        self.index = {id(n): i for i, n in enumerate(self.fqs)}
        self.args = [check_feeds(q, f) for f in feeds]
        self.calls = 0  # samples evaluated (configurations × feeds)
        self.weight = np.array([f.attrs.get("kind") == "weight" for f in self.fqs], bool)
        self._wide = [f.attrs.get("kind") == "activation" and f.attrs.get("axis") is None
                      for f in self.fqs]
        self._state: dict[str, Any] = {}
        self._ref: list[np.ndarray] | None = None
        self._single = None
        self._batched = None
        per_sample = peak_bytes(q)
        self.batch = max(1, min(max_samples, MAX_BATCH_BYTES // max(per_sample, 1))
                         // max(len(feeds), 1))
        qb = _dynamic_batch(q) if batched and (self.batch > 1 or len(feeds) > 1) else None
        if qb is not None:
            self._use_batched(qb)
        if self._batched is None:
            self.batch = 1
            self._use_single()

    def _wire(self, g: Graph) -> None:
        """Index ``g``'s nodes (``q`` or its dynamic-batch copy, same node order)."""
        fqs = [n for n in g.nodes if n.op == "FAKE_QUANT"]
        self._index = {id(n): i for i, n in enumerate(fqs)}
        # per node: (input position, FAKE_QUANT index) of the weights it reads
        self._reads: dict[int, list[tuple[int, int]]] = {}
        for node in g.nodes:
            r = [(k, self._index[id(t.producer)]) for k, t in enumerate(node.inputs)
                 if t is not None and t.producer is not None and id(t.producer) in self._index
                 and self.weight[self._index[id(t.producer)]]]
            if r:
                self._reads[id(node)] = r
        self._multi = [[i for _, i in r] for r in self._reads.values() if len(r) > 1]

    def _use_single(self) -> None:
        from qatir.tf.executor import program_for

        self._wire(self.q)
        self.prog = program_for(self.q)
        self.prog.sync_from_graph()
        n = len(self.fqs)
        vec = [tf.TensorSpec([n], tf.float32), tf.TensorSpec([n], tf.float32)]
        ins = [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype)) for t in self.q.inputs]
        self._single = tf.function(self._single_fn, input_signature=vec + ins, autograph=False)

    def _use_batched(self, qb: Graph) -> None:
        from qatir.tf.executor import Program

        self._wire(qb)
        self._qb = qb  # the program holds its graph weakly
        self.prog = Program(qb, name="qatir_gated")
        n = len(self.fqs)
        mat = [tf.TensorSpec([None, n], tf.float32)] * 2
        ins = [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype)) for t in qb.inputs]
        self._batched = tf.function(self._batched_fn,
                                    input_signature=[*mat, tf.TensorSpec([n], tf.float32), *ins],
                                    autograph=False)
        n = len(self.fqs)
        z, o = np.zeros(n, np.float32), np.ones(n, np.float32)
        try:  # two configurations on every feed at once, against each alone on the first
            both = self._call_batched([(z, z), (o, z)])
            alone = [self._call_batched([c], self.args[:1])[0] for c in ((z, z), (o, z))]
        except (tf.errors.OpError, ValueError, TypeError, QatirError):
            self._batched = None
            return
        from qatir.sensitivity import sqnr_db

        nout = len(alone[0])
        for got, want in zip(both, alone):
            if len(got) < nout or any(a.shape != b.shape for a, b in zip(got, want)) \
                    or sqnr_db(want, got[:nout]) < CHECK_DB:
                self._batched = None
                return
        self.calls = 0

    # ------------------------------------------------------------ traced
    def _single_hook(self, node: Node, args: list, outs: Any) -> Any:
        i = self._index.get(id(node))
        if i is None:
            return outs
        s, x = self._state, args[0]
        g8, g16 = s["g8"][i], s["g16"][i]
        # branches, so a configuration pays only for the 16-bit fake-quant it switches on
        y = tf.cond(g8 > 0, lambda: x + g8 * (outs - x), lambda: x)
        if self._wide[i]:
            lo, hi = tf.reshape(args[1], []), tf.reshape(args[2], [])
            y = tf.cond(g16 > 0, lambda: y + g16 * (_fq16(x, lo, hi) - x), lambda: y)
        return y

    def _batched_hook(self, node: Node, args: list, outs: Any) -> Any:
        s = self._state
        i = self._index.get(id(node))
        if i is not None:
            x = args[0]
            if self.weight[i]:
                s["w_on"][i] = x + 1.0 * (outs - x)  # what gate 1 gives, for readers
                return x + s["w_gate"][i] * (outs - x)
            g = tf.reshape(s["g8"][:, i], [-1] + [1] * (node.inputs[0].rank - 1))
            y = x + g * (outs - x)
            if self._wide[i]:
                lo, hi = tf.reshape(args[1], []), tf.reshape(args[2], [])
                idx = tf.where(s["g16"][:, i] > 0)
                xs = tf.gather_nd(x, idx)
                ys = tf.gather_nd(y, idx) + 1.0 * (_fq16(xs, lo, hi) - xs)
                y = tf.tensor_scatter_nd_update(y, idx, ys)
            return y
        reads = self._reads.get(id(node))
        if not reads:
            return outs
        from qatir.tf.kernels import get_kernel

        j = reads[0][1]
        idx = tf.where(tf.not_equal(s["g8"][:, j], s["w_gate"][j]))  # samples wanting w_on
        single = isinstance(outs, (tf.Tensor, tf.Variable)) or not isinstance(outs, (list, tuple))
        off = [outs] if single else list(outs)

        def on_some():
            sub = list(args)
            for k, t in enumerate(node.inputs):
                if t is not None and not t.is_const and sub[k] is not None:
                    sub[k] = tf.gather_nd(sub[k], idx)
            for k, i in reads:
                sub[k] = s["w_on"][i]
            on = get_kernel(node)(s["ctx"], node, sub)
            return [tf.tensor_scatter_nd_update(a, idx, b)
                    for a, b in zip(off, [on] if single else on)]

        # a branch, not an empty batch: TF's CPU Conv2D returns its input on zero samples
        ys = tf.cond(tf.size(idx) > 0, on_some, lambda: off)
        return ys[0] if single else ys

    def _forward(self, inputs: list, hook) -> list:
        from qatir.tf.kernels import KernelContext

        ctx = KernelContext(self.prog.params)
        self._state.update(ctx=ctx, w_on={})
        return self.prog.forward(list(inputs), ctx, hook=hook)

    def _single_fn(self, g8, g16, *inputs):
        self._state.update(g8=g8, g16=g16)
        return self._forward(list(inputs), self._single_hook)

    def _batched_fn(self, g8, g16, w_gate, *inputs):
        self._state.update(g8=g8, g16=g16, w_gate=w_gate)
        return self._forward(list(inputs), self._batched_hook)

    # ------------------------------------------------------------ running
    def run(self, g8: np.ndarray, g16: np.ndarray) -> list[np.ndarray]:
        """All outputs over all feeds (feed-major), flattened into one list."""
        out: list[list[np.ndarray]] = []
        self.run_many([(g8, g16)], out.append)
        return out[0]

    @property
    def ref(self) -> list[np.ndarray]:
        """The float run (every gate 0), computed once."""
        if self._ref is None:
            z = np.zeros(len(self.fqs), np.float32)
            self._ref = self.run(z, z)
        return self._ref

    def _consistent(self, g8: np.ndarray) -> bool:
        """A node reading several weights has them all on or all off (or it runs alone)."""
        return all(len(set(g8[idx].tolist())) == 1 for idx in self._multi)

    def run_many(self, configs: Sequence[Config], sink: Callable[[list[np.ndarray]], Any]
                 ) -> None:
        """Run each configuration (0/1 gates) and hand its outputs, as :meth:`run` returns
        them, to ``sink``, in order; batched as the module docstring says."""
        configs = [(np.asarray(a, np.float32), np.asarray(b, np.float32)) for a, b in configs]
        i = 0
        while i < len(configs):
            group = [configs[i]]
            if self._batched is not None and self._consistent(configs[i][0]):
                while (len(group) < self.batch and i + len(group) < len(configs)
                       and self._consistent(configs[i + len(group)][0])):
                    group.append(configs[i + len(group)])
            i += len(group)
            if self._batched is None:
                for g8, g16 in group:
                    got = []
                    for args in self.args:
                        ys = self._single(tf.constant(g8), tf.constant(g16), *args)
                        got.extend(y.numpy() for y in ys)
                    self.calls += len(self.args)
                    sink(got)
                continue
            for got in self._call_batched(group):
                sink(got)

    def _call_batched(self, group: list[Config], feeds: list | None = None
                      ) -> list[list[np.ndarray]]:
        feeds = self.args if feeds is None else feeds
        f, k = len(feeds), len(group)
        g8 = np.repeat(np.stack([c[0] for c in group]), f, axis=0)  # sample c·f + j
        g16 = np.repeat(np.stack([c[1] for c in group]), f, axis=0)
        mixed = (g8.min(axis=0) != g8.max(axis=0)) & self.weight
        w_gate = np.where(mixed, 0.0, g8.max(axis=0)).astype(np.float32)
        xs = [np.concatenate([a[j] for a in feeds] * k) for j in range(len(feeds[0]))]
        ys = [y.numpy() for y in self._batched(tf.constant(g8), tf.constant(g16),
                                                tf.constant(w_gate), *xs)]
        self.calls += f * k
        return [[y[c * f + j:c * f + j + 1] for j in range(f) for y in ys] for c in range(k)]


def _fq16(x, lo, hi):
    """16-bit symmetric fake-quant over the 8-bit range's larger side (int16 activations)."""
    m = tf.maximum(-lo, hi)
    return tf.quantization.fake_quant_with_min_max_vars(x, -m, m, num_bits=16,
                                                        narrow_range=True)
