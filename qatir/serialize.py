"""JSON dump (validated by schemas/ir.schema.json) and the lossless .qatir file.

A .qatir file is a zip holding ``graph.json`` (the same structure as the JSON
dump) and one ``.npy`` per constant, so weights and quant params round-trip
exactly.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from importlib import resources
from typing import Any

import numpy as np

from qatir.errors import ModelFormatError
from qatir.ir import Graph, Node, QuantParams, Tensor

FORMAT = "qatir-ir"
VERSION = 1


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return v


def graph_to_dict(graph: Graph, arrays: dict[str, np.ndarray] | None = None,
                  include_data: bool = False) -> dict[str, Any]:
    """Plain data for the graph. Constant arrays go into ``arrays`` when given."""
    tensors = []
    for t in graph.tensors.values():
        entry: dict[str, Any] = {
            "name": t.name,
            "shape": list(t.shape),
            "dtype": t.dtype.name,
        }
        if t.quant is not None:
            entry["quant"] = t.quant.to_dict()
        if t.source_layout is not None:
            entry["source_layout"] = t.source_layout
        if t.data is not None:
            key = f"t{len(tensors)}"
            entry["const"] = key
            if arrays is not None:
                arrays[key] = t.data
            elif include_data:
                entry["values"] = t.data.tolist()
        tensors.append(entry)
    nodes = [{
        "name": n.name,
        "op": n.op,
        "inputs": [None if t is None else t.name for t in n.inputs],
        "outputs": [t.name for t in n.outputs],
        "attrs": _plain(n.attrs),
    } for n in graph.nodes]
    return {
        "format": FORMAT,
        "version": VERSION,
        "name": graph.name,
        "inputs": [t.name for t in graph.inputs],
        "outputs": [t.name for t in graph.outputs],
        "metadata": _plain(graph.metadata),
        "tensors": tensors,
        "nodes": nodes,
    }


def graph_to_json(graph: Graph, include_data: bool = False) -> str:
    return json.dumps(graph_to_dict(graph, include_data=include_data), indent=1, sort_keys=True)


def _schema() -> dict[str, Any]:
    text = resources.files("qatir.schemas").joinpath("ir.schema.json").read_text()
    return json.loads(text)


def validate_dict(d: Any, source: str) -> None:
    import jsonschema

    try:
        jsonschema.validate(d, _schema())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise ModelFormatError(f"{source}: invalid IR at {where}: {e.message}") from None


def graph_from_dict(d: dict[str, Any], arrays: dict[str, np.ndarray] | None = None,
                    source: str = "<ir>", validate: bool = True) -> Graph:
    """Rebuild a graph (validated against the schema unless trusted); names must resolve."""
    if validate:
        validate_dict(d, source)
    g = Graph(d["name"])
    g.metadata = dict(d.get("metadata", {}))
    for e in d["tensors"]:
        data = None
        if "const" in e:
            if arrays is not None:
                if e["const"] not in arrays:
                    raise ModelFormatError(f"{source}: constant data for %{e['name']} is missing")
                data = arrays[e["const"]]
            elif "values" in e:
                data = np.asarray(e["values"], dtype=e["dtype"]).reshape(e["shape"])
        try:
            quant = QuantParams.from_dict(e["quant"]) if "quant" in e else None
            t = Tensor(e["name"], e["shape"], e["dtype"], data, quant, e.get("source_layout"))
        except (ValueError, TypeError) as err:
            raise ModelFormatError(f"{source}: tensor %{e['name']}: {err}") from None
        if t.name in g.tensors:
            raise ModelFormatError(f"{source}: duplicate tensor %{t.name}")
        g.tensors[t.name] = t

    def lookup(name: str, what: str) -> Tensor:
        try:
            return g.tensors[name]
        except KeyError:
            raise ModelFormatError(f"{source}: {what} refers to unknown tensor %{name}") from None

    for e in d["nodes"]:
        if e["name"] in g._node_names:
            raise ModelFormatError(f"{source}: duplicate node name {e['name']!r}")
        node = Node(e["op"], e["name"], e["attrs"])
        for name in e["inputs"]:
            node.add_input(None if name is None else lookup(name, f"node {e['name']!r}"))
        for name in e["outputs"]:
            t = lookup(name, f"node {e['name']!r}")
            if t.producer is not None:
                raise ModelFormatError(f"{source}: %{name} has two producers")
            t.producer = node
            node._outputs.append(t)
        node.graph = g
        g.nodes.append(node)
        g._node_names.add(node.name)
    g.inputs = [lookup(n, "graph inputs") for n in d["inputs"]]
    g.outputs = [lookup(n, "graph outputs") for n in d["outputs"]]
    return g


def save_qatir_bytes(graph: Graph) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    meta = graph_to_dict(graph, arrays=arrays)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("graph.json", json.dumps(meta, sort_keys=True))
        for key, arr in arrays.items():
            b = io.BytesIO()
            np.save(b, np.ascontiguousarray(arr), allow_pickle=False)
            z.writestr(f"{key}.npy", b.getvalue())
    return buf.getvalue()


def _read_npy(z: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> np.ndarray:
    """Read one array, refusing a header that declares more data than the member holds."""
    from numpy.lib import format as npy

    with z.open(info) as f:
        version = npy.read_magic(f)
        read_header = npy.read_array_header_1_0 if version == (1, 0) else \
            npy.read_array_header_2_0
        shape, _, dtype = read_header(f)
        declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
        available = info.file_size - f.tell()
        if dtype.hasobject or declared != available:
            raise ModelFormatError(
                f"{path}: member {info.filename} declares {dtype}{list(shape)} "
                f"({declared} bytes) but holds {available} bytes")
    return np.load(io.BytesIO(z.read(info)), allow_pickle=False)


def load_qatir(path: str) -> Graph:
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read("graph.json"))
            arrays = {}
            for info in z.infolist():
                if info.filename.endswith(".npy"):
                    arrays[info.filename[:-4]] = _read_npy(z, info, path)
    except (zipfile.BadZipFile, zlib.error, KeyError, ValueError, OSError, EOFError,
            NotImplementedError, RuntimeError) as e:  # corrupt, unsupported or encrypted zip
        raise ModelFormatError(f"{path}: not a readable .qatir file ({e})") from None
    return graph_from_dict(meta, arrays, source=path)


def load_json(path: str) -> Graph:
    try:
        with open(path) as f:
            d = json.load(f)
    except (ValueError, OSError) as e:
        raise ModelFormatError(f"{path}: not a readable JSON IR dump ({e})") from None
    return graph_from_dict(d, None, source=path)
