"""Converts an opset-17 ONNX model to opset 20 by hand, for check_models.py --opset20:
libonnx 1.12's version converter stops at 17 and torch 1.13 exports 17 at most.

Only what differs for the ops the benchmark models use: ReduceMean, ReduceL2 and ReduceMax take
their axes as an input (opset 18), and each GELU subgraph torch writes in the Erf form,
    x -> Div(sqrt 2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5),
becomes one Gelu node (opset 20, approximate "none"). Every other op these models hold has the
same form at 17 and at 20.
"""
import math

import numpy as np
from onnx import helper, numpy_helper


def _scalar(graph, name):
    """The value of a one-element constant (initializer or Constant node), else None."""
    for t in graph.initializer:
        if t.name == name:
            a = numpy_helper.to_array(t)
            return float(a.reshape(-1)[0]) if a.size == 1 else None
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    v = numpy_helper.to_array(a.t)
                    return float(v.reshape(-1)[0]) if v.size == 1 else None
    return None


def _other(node, value):
    return node.input[1] if node.input[0] == value else node.input[0]


def _gelu_matches(graph):
    """(x, nodes, output) for each Erf-form GELU."""
    readers = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def only_reader(value, op):
        r = readers.get(value, [])
        return r[0] if len(r) == 1 and r[0].op_type == op else None

    found = []
    for div in graph.node:
        if div.op_type != "Div":
            continue
        c = _scalar(graph, div.input[1])
        if c is None or abs(c - math.sqrt(2.0)) > 1e-6:
            continue
        x = div.input[0]
        erf = only_reader(div.output[0], "Erf")
        add = erf and only_reader(erf.output[0], "Add")
        if not add or _scalar(graph, _other(add, erf.output[0])) != 1.0:
            continue
        mul_x = only_reader(add.output[0], "Mul")
        if not mul_x or _other(mul_x, add.output[0]) != x:
            continue
        half = only_reader(mul_x.output[0], "Mul")
        if not half or _scalar(graph, _other(half, mul_x.output[0])) != 0.5:
            continue
        found.append((x, [div, erf, add, mul_x, half], half.output[0]))
    return found


def to_opset20(model):
    """Rewrites `model` (an onnx.ModelProto at opset 17) in place; returns the Gelu count."""
    graph = model.graph
    for index, node in enumerate(graph.node):
        if node.op_type not in ("ReduceMean", "ReduceL2", "ReduceMax"):
            continue
        axes = [a for a in node.attribute if a.name == "axes"]
        if axes:
            name = f"{node.name or node.op_type}_axes_{index}"
            graph.initializer.append(numpy_helper.from_array(np.array(axes[0].ints, np.int64), name))
            node.attribute.remove(axes[0])
            node.input.append(name)
    matches = _gelu_matches(graph)
    for x, nodes, output in matches:
        position = list(graph.node).index(nodes[0])
        for n in nodes:
            graph.node.remove(n)
        graph.node.insert(position, helper.make_node("Gelu", [x], [output],
                                                     name=nodes[0].name + "_Gelu"))
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    for n in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(n)
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 20))
    del model.graph.value_info[:]
    return len(matches)
