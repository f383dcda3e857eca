"""Convert MediaPipe's face-mesh TF Lite models to ONNX, once, at development time.

The project ships the ONNX files this module writes (``models/``), so nothing at run time needs
TF Lite or the ``mediapipe`` package. The converter reads the TF Lite flatbuffer with the ``tflite``
schema package and writes the same graph with standard ONNX operators (opset 17):

* activations are kept NCHW inside the graph (TF Lite is NHWC); the graph's inputs and outputs
  keep TF Lite's shapes and layout;
* float16 weights (``DEQUANTIZE``) become float32 initialisers;
* MediaPipe's three custom operators of the attention landmark model are written out with
  standard operators: ``Landmarks2TransformMatrix`` (v2) builds a 4x4 similarity from a landmark
  subset, ``TransformTensorBilinear`` (v2) samples a feature map through it (``GridSample`` plus
  an in-bounds mask, as the original zeroes samples outside the map), ``TransformLandmarks`` (v2)
  maps 2D points through it.

Run: ``python -m engines.geometry.trackers.face_mesh.tflite_to_onnx MODEL.tflite OUT.onnx``
(needs ``pip install tflite flatbuffers``; see ``models/README.md`` for how the shipped files were
made).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)
_TFLITE_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}


class ConversionError(RuntimeError):
    """The TF Lite graph uses something this converter does not handle."""


class _Graph:
    """The ONNX graph under construction, keyed by TF Lite tensor index."""

    def __init__(self, model: Any, subgraph: Any) -> None:
        self.model = model
        self.subgraph = subgraph
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.names: dict[int, str] = {}  # TF Lite tensor -> ONNX value (NCHW for 4D activations)
        self.constants: dict[int, npt.NDArray[Any]] = {}
        self._serial = 0

    def fresh(self, stem: str) -> str:
        self._serial += 1
        return f"{stem}_{self._serial}"

    def shape(self, index: int) -> list[int]:
        tensor = self.subgraph.Tensors(index)
        return [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []

    def constant_data(self, index: int) -> npt.NDArray[Any] | None:
        if index in self.constants:
            return self.constants[index]
        tensor = self.subgraph.Tensors(index)
        buffer = self.model.Buffers(tensor.Buffer())
        if buffer is None or buffer.DataLength() == 0:
            return None
        dtype = _TFLITE_DTYPES.get(tensor.Type())
        if dtype is None:
            raise ConversionError(f"tensor {index}: TF Lite type {tensor.Type()} is not handled")
        raw = buffer.DataAsNumpy().tobytes()
        return np.frombuffer(raw, dtype=dtype).reshape(self.shape(index)).copy()

    def initializer(self, array: npt.NDArray[Any] | np.generic, stem: str = "const") -> str:
        name = self.fresh(stem)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, values: list[int]) -> str:
        """An int64 initialiser (shapes, indices, axes)."""
        return self.initializer(np.array(values, dtype=np.int64), "ints")

    def column(self, value: str, start: int, axis: int = 1) -> str:
        """``value[..., start:start + 1]`` along ``axis``."""
        return self.node("Slice", [value, self.ints([start]), self.ints([start + 1]), self.ints([axis])])

    def node(self, op: str, inputs: list[str], stem: str | None = None, **attrs: Any) -> str:
        output = self.fresh(stem or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def value(self, index: int) -> str:
        """The ONNX value of a TF Lite tensor (constants become initialisers, 4D ones NCHW)."""
        if index in self.names:
            return self.names[index]
        data = self.constant_data(index)
        if data is None:
            raise ConversionError(f"tensor {index} is used before it is produced")
        if data.dtype == np.float16:
            data = data.astype(np.float32)
        if data.ndim == 4:
            data = data.transpose(NHWC_TO_NCHW)
        self.names[index] = self.initializer(data)
        return self.names[index]

    def nhwc(self, index: int) -> str:
        """The value in TF Lite's own layout (4D activations transposed back to NHWC)."""
        name = self.value(index)
        if len(self.shape(index)) == 4:
            return self.node("Transpose", [name], perm=list(NCHW_TO_NHWC))
        return name

    def store(self, index: int, name: str, layout_nhwc: bool) -> None:
        """Record an op's output; a 4D result computed in NHWC is transposed to NCHW."""
        if layout_nhwc and len(self.shape(index)) == 4:
            name = self.node("Transpose", [name], perm=list(NHWC_TO_NCHW))
        self.names[index] = name


def _builtin_names() -> dict[int, str]:
    import tflite

    return {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}


def _same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _activation(graph: _Graph, name: str, code: int) -> str:
    if code == 0:
        return name
    if code == 1:
        return graph.node("Relu", [name])
    if code == 3:
        return graph.node("Clip", [name, graph.initializer(np.float32(0)), graph.initializer(np.float32(6))])
    raise ConversionError(f"fused activation {code} is not handled")


def _conv(graph: _Graph, op: Any, depthwise: bool) -> None:
    import tflite

    options_type = tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions
    options = options_type()
    table = op.BuiltinOptions()
    options.Init(table.Bytes, table.Pos)
    x, w, b = (int(i) for i in op.InputsAsNumpy()[:3])
    weights = graph.constant_data(w)
    if weights is None:
        raise ConversionError("convolution weights must be constant")
    weights = weights.astype(np.float32)
    in_shape = graph.shape(x)
    if depthwise:  # (1, kh, kw, C*M) -> (C*M, 1, kh, kw), one group per input channel
        kernel = weights.transpose(3, 0, 1, 2)
        group = in_shape[3]
    else:  # (O, kh, kw, I) -> (O, I, kh, kw)
        kernel = weights.transpose(0, 3, 1, 2)
        group = 1
    kh, kw = kernel.shape[2], kernel.shape[3]
    stride_h, stride_w = options.StrideH(), options.StrideW()
    dil_h, dil_w = options.DilationHFactor() or 1, options.DilationWFactor() or 1
    if options.Padding() == tflite.Padding.SAME:
        top, bottom = _same_pads(in_shape[1], kh, stride_h, dil_h)
        left, right = _same_pads(in_shape[2], kw, stride_w, dil_w)
    else:
        top = bottom = left = right = 0
    inputs = [graph.value(x), graph.initializer(kernel, "weight")]
    if b >= 0:
        bias = graph.constant_data(b)
        if bias is None:
            raise ConversionError("convolution bias must be constant")
        inputs.append(graph.initializer(bias.astype(np.float32), "bias"))
    out = graph.node(
        "Conv",
        inputs,
        kernel_shape=[kh, kw],
        strides=[stride_h, stride_w],
        dilations=[dil_h, dil_w],
        pads=[top, left, bottom, right],
        group=group,
    )
    graph.store(
        int(op.OutputsAsNumpy()[0]), _activation(graph, out, options.FusedActivationFunction()), False
    )


def _max_pool(graph: _Graph, op: Any) -> None:
    import tflite

    options = tflite.Pool2DOptions()
    table = op.BuiltinOptions()
    options.Init(table.Bytes, table.Pos)
    x = int(op.InputsAsNumpy()[0])
    in_shape = graph.shape(x)
    kh, kw, sh, sw = options.FilterHeight(), options.FilterWidth(), options.StrideH(), options.StrideW()
    if options.Padding() == tflite.Padding.SAME:
        top, bottom = _same_pads(in_shape[1], kh, sh)
        left, right = _same_pads(in_shape[2], kw, sw)
    else:
        top = bottom = left = right = 0
    out = graph.node(
        "MaxPool", [graph.value(x)], kernel_shape=[kh, kw], strides=[sh, sw], pads=[top, left, bottom, right]
    )
    graph.store(
        int(op.OutputsAsNumpy()[0]), _activation(graph, out, options.FusedActivationFunction()), False
    )


def _binary(graph: _Graph, op: Any, onnx_op: str, options_type: Any) -> None:
    options = options_type()
    table = op.BuiltinOptions()
    activation = 0
    if table is not None:
        options.Init(table.Bytes, table.Pos)
        activation = options.FusedActivationFunction()
    a, b = (int(i) for i in op.InputsAsNumpy()[:2])
    out_index = int(op.OutputsAsNumpy()[0])
    rank = len(graph.shape(out_index))
    operands = []
    for index in (a, b):
        data = graph.constant_data(index) if index not in graph.names else None
        if data is not None and rank == 4 and data.ndim < 4:
            # A broadcast constant in NHWC: give it all four axes, then NCHW order.
            data = (
                data.astype(np.float32).reshape((1,) * (4 - data.ndim) + data.shape).transpose(NHWC_TO_NCHW)
            )
            operands.append(graph.initializer(data))
        else:
            operands.append(graph.value(index))
    out = graph.node(onnx_op, operands)
    graph.store(out_index, _activation(graph, out, activation), False)


def _prelu(graph: _Graph, op: Any) -> None:
    x, alpha = (int(i) for i in op.InputsAsNumpy()[:2])
    slope = graph.constant_data(alpha)
    if slope is None:
        raise ConversionError("PReLU slope must be constant")
    slope = slope.astype(np.float32)
    slope = slope.reshape((1,) * (3 - slope.ndim) + slope.shape).transpose(
        2, 0, 1
    )  # (H|1, W|1, C) -> (C, ., .)
    out = graph.node("PRelu", [graph.value(x), graph.initializer(slope, "slope")])
    graph.store(int(op.OutputsAsNumpy()[0]), out, False)


def _pad(graph: _Graph, op: Any) -> None:
    x, paddings = (int(i) for i in op.InputsAsNumpy()[:2])
    spec = graph.constant_data(paddings)
    if spec is None or spec.shape != (4, 2):
        raise ConversionError("PAD needs constant 4D paddings")
    begin = [int(spec[axis, 0]) for axis in NHWC_TO_NCHW]
    end = [int(spec[axis, 1]) for axis in NHWC_TO_NCHW]
    pads = graph.initializer(np.array(begin + end, dtype=np.int64), "pads")
    graph.store(
        int(op.OutputsAsNumpy()[0]), graph.node("Pad", [graph.value(x), pads], mode="constant"), False
    )


def _reshape(graph: _Graph, op: Any) -> None:
    x = int(op.InputsAsNumpy()[0])
    out_index = int(op.OutputsAsNumpy()[0])
    target = graph.ints(graph.shape(out_index))
    graph.store(out_index, graph.node("Reshape", [graph.nhwc(x), target]), True)


def _concat(graph: _Graph, op: Any) -> None:
    import tflite

    options = tflite.ConcatenationOptions()
    table = op.BuiltinOptions()
    options.Init(table.Bytes, table.Pos)
    inputs = [graph.nhwc(int(i)) for i in op.InputsAsNumpy()]
    out_index = int(op.OutputsAsNumpy()[0])
    out = graph.node("Concat", inputs, axis=options.Axis())
    graph.store(out_index, _activation(graph, out, options.FusedActivationFunction()), True)


def _strided_slice(graph: _Graph, op: Any) -> None:
    import tflite

    options = tflite.StridedSliceOptions()
    table = op.BuiltinOptions()
    options.Init(table.Bytes, table.Pos)
    if options.EllipsisMask() or options.NewAxisMask() or options.ShrinkAxisMask():
        raise ConversionError("STRIDED_SLICE with ellipsis, new-axis or shrink masks is not handled")
    x, begin_i, end_i, stride_i = (int(i) for i in op.InputsAsNumpy()[:4])
    shape = graph.shape(x)
    begin, end, strides = (graph.constant_data(i) for i in (begin_i, end_i, stride_i))
    if begin is None or end is None or strides is None:
        raise ConversionError("STRIDED_SLICE needs constant bounds")
    starts = [0 if options.BeginMask() >> a & 1 else int(begin[a]) for a in range(len(shape))]
    ends = [shape[a] if options.EndMask() >> a & 1 else int(end[a]) for a in range(len(shape))]
    out = graph.node(
        "Slice",
        [
            graph.nhwc(x),
            graph.initializer(np.array(starts, dtype=np.int64)),
            graph.initializer(np.array(ends, dtype=np.int64)),
            graph.initializer(np.arange(len(shape), dtype=np.int64)),
            graph.initializer(strides.astype(np.int64)),
        ],
    )
    graph.store(int(op.OutputsAsNumpy()[0]), out, True)


def _dequantize(graph: _Graph, op: Any) -> None:
    source = graph.constant_data(int(op.InputsAsNumpy()[0]))
    if source is None:
        raise ConversionError("DEQUANTIZE of a computed tensor is not handled")
    graph.constants[int(op.OutputsAsNumpy()[0])] = source.astype(np.float32)


def _landmarks_to_matrix(graph: _Graph, op: Any, options: dict[str, Any]) -> None:
    """Landmarks2TransformMatrix v2: the similarity that maps an output grid onto a landmark box."""
    points = graph.nhwc(int(op.InputsAsNumpy()[0]))  # (1, N, 3)
    xy = graph.node(
        "Slice",
        [
            points,
            graph.ints([0]),
            graph.ints([2]),
            graph.ints([2]),
        ],
    )  # (1, N, 2)
    xy = graph.node("Squeeze", [xy, graph.ints([0])])  # (N, 2)

    def gather(indices: list[int]) -> str:
        return graph.node("Gather", [xy, graph.initializer(np.array(indices, dtype=np.int64))], axis=0)

    left = gather([int(options["left_rotation_idx"])])
    right = gather([int(options["right_rotation_idx"])])
    delta = graph.node("Sub", [right, left])  # (1, 2): dx, dy
    length = graph.node(
        "Sqrt", [graph.node("ReduceSum", [graph.node("Mul", [delta, delta]), graph.ints([1])], keepdims=1)]
    )
    unit = graph.node("Div", [delta, length])  # cos a, sin a of the eye/mouth line's angle a
    target = float(options.get("target_rotation_radians", 0.0))
    # rotation r = target - a: cos r = cos t cos a + sin t sin a, sin r = sin t cos a - cos t sin a.
    to_cos_sin_r = np.array(
        [[math.cos(target), math.sin(target)], [math.sin(target), -math.cos(target)]], dtype=np.float32
    )
    cos_sin_r = graph.node("MatMul", [unit, graph.initializer(to_cos_sin_r)])  # (1, 2)
    cos_r = graph.column(cos_sin_r, 0)
    sin_r = graph.column(cos_sin_r, 1)
    subset = gather([int(i) for i in options["subset_idxs"]])  # (K, 2)
    # Rotate by r: (x cos r - y sin r, x sin r + y cos r) as subset @ [[cos, sin], [-sin, cos]].
    neg_sin_r = graph.node("Neg", [sin_r])
    rot = graph.node(
        "Concat",
        [
            graph.node("Concat", [cos_r, sin_r], axis=1),
            graph.node("Concat", [neg_sin_r, cos_r], axis=1),
        ],
        axis=0,
    )  # (2, 2)
    rotated = graph.node("MatMul", [subset, rot])
    high = graph.node("ReduceMax", [rotated], axes=[0], keepdims=1)  # (1, 2)
    low = graph.node("ReduceMin", [rotated], axes=[0], keepdims=1)
    size = graph.node("Sub", [high, low])  # crop width, height
    middle = graph.node("Mul", [graph.node("Add", [high, low]), graph.initializer(np.float32(0.5))])
    # Back by -r: (x cos r + y sin r, -x sin r + y cos r) = middle @ [[cos, -sin], [sin, cos]].
    unrot = graph.node(
        "Concat",
        [
            graph.node("Concat", [cos_r, neg_sin_r], axis=1),
            graph.node("Concat", [sin_r, cos_r], axis=1),
        ],
        axis=0,
    )
    centre = graph.node("MatMul", [middle, unrot])  # (1, 2): crop x, y
    out_w, out_h = float(options["output_width"]), float(options["output_height"])
    scale = graph.node(
        "Mul",
        [
            size,
            graph.initializer(
                np.array(
                    [[float(options["scale_x"]) / out_w, float(options["scale_y"]) / out_h]], dtype=np.float32
                )
            ),
        ],
    )
    scale_x = graph.column(scale, 0)
    scale_y = graph.column(scale, 1)
    # t = shift(centre) . rot(-r) . scale . shift(-out/2): the 2x2 part A = [[c sx, s sy], [-s sx, c sy]].
    a00 = graph.node("Mul", [cos_r, scale_x])
    a01 = graph.node("Mul", [sin_r, scale_y])
    a10 = graph.node("Mul", [neg_sin_r, scale_x])
    a11 = graph.node("Mul", [cos_r, scale_y])
    half_w, half_h = graph.initializer(np.float32(-out_w / 2.0)), graph.initializer(np.float32(-out_h / 2.0))
    centre_x = graph.column(centre, 0)
    centre_y = graph.column(centre, 1)
    t03 = graph.node(
        "Add",
        [graph.node("Add", [graph.node("Mul", [a00, half_w]), graph.node("Mul", [a01, half_h])]), centre_x],
    )
    t13 = graph.node(
        "Add",
        [graph.node("Add", [graph.node("Mul", [a10, half_w]), graph.node("Mul", [a11, half_h])]), centre_y],
    )
    zero, one = (
        graph.initializer(np.zeros((1, 1), np.float32)),
        graph.initializer(np.ones((1, 1), np.float32)),
    )
    row0 = graph.node("Concat", [a00, a01, zero, t03], axis=1)
    row1 = graph.node("Concat", [a10, a11, zero, t13], axis=1)
    row2 = graph.node("Concat", [zero, zero, one, zero], axis=1)
    row3 = graph.node("Concat", [zero, zero, zero, one], axis=1)
    matrix = graph.node("Concat", [row0, row1, row2, row3], axis=0)
    matrix = graph.node("Reshape", [matrix, graph.ints([1, 4, 4])])
    graph.store(int(op.OutputsAsNumpy()[0]), matrix, True)


def _transform_tensor(graph: _Graph, op: Any, options: dict[str, Any]) -> None:
    """TransformTensorBilinear v2: sample a feature map at the matrix's pixel-centre grid."""
    feature_i, matrix_i = (int(i) for i in op.InputsAsNumpy()[:2])
    _, in_h, in_w, _ = graph.shape(feature_i)
    out_h, out_w = int(options["output_height"]), int(options["output_width"])
    matrix = graph.value(matrix_i)
    # Rows 0 and 1 of the matrix, as (3, 2) acting on (x, y, 1), with the half-pixel correction.
    flat = graph.node("Reshape", [matrix, graph.ints([16])])
    picks = graph.node("Gather", [flat, graph.ints([0, 4, 1, 5, 3, 7])])
    affine = graph.node("Reshape", [picks, graph.ints([3, 2])])
    half = graph.node(
        "Mul",
        [
            graph.node(
                "ReduceSum",
                [graph.node("Slice", [affine, *(graph.ints([v]) for v in (0, 2, 0))]), graph.ints([0])],
                keepdims=1,
            ),
            graph.initializer(np.float32(0.5)),
        ],
    )  # (1, 2): 0.5 (m0 + m1) per output coordinate
    correction = graph.node("Sub", [half, graph.initializer(np.float32(0.5))])
    pad = graph.node("Concat", [graph.initializer(np.zeros((2, 2), np.float32)), correction], axis=0)
    affine = graph.node("Add", [affine, pad])
    ys, xs = np.meshgrid(
        np.arange(out_h, dtype=np.float32), np.arange(out_w, dtype=np.float32), indexing="ij"
    )
    grid_points = np.stack([xs.ravel(), ys.ravel(), np.ones(out_h * out_w, np.float32)], axis=1)
    coords = graph.node("MatMul", [graph.initializer(grid_points), affine])  # (P, 2) input pixels
    limits = np.array([[in_w - 1, in_h - 1]], dtype=np.float32)
    inside = graph.node(
        "And",
        [
            graph.node("GreaterOrEqual", [coords, graph.initializer(np.zeros((1, 2), np.float32))]),
            graph.node("LessOrEqual", [coords, graph.initializer(limits)]),
        ],
    )
    inside = graph.node(
        "Cast",
        [graph.node("ReduceMin", [graph.node("Cast", [inside], to=TensorProto.INT32)], axes=[1], keepdims=1)],
        to=TensorProto.FLOAT,
    )
    mask = graph.node("Reshape", [inside, graph.ints([1, 1, out_h, out_w])])
    normalised = graph.node(
        "Sub",
        [graph.node("Mul", [coords, graph.initializer(2.0 / limits)]), graph.initializer(np.float32(1.0))],
    )
    grid = graph.node("Reshape", [normalised, graph.ints([1, out_h, out_w, 2])])
    sampled = graph.node(
        "GridSample", [graph.value(feature_i), grid], mode="bilinear", padding_mode="zeros", align_corners=1
    )
    graph.store(int(op.OutputsAsNumpy()[0]), graph.node("Mul", [sampled, mask]), False)


def _transform_landmarks(graph: _Graph, op: Any, options: dict[str, Any]) -> None:
    """TransformLandmarks v2: (1, N, 2) points through rows 0 and 1 of a (1, 4, 4) matrix."""
    points_i, matrix_i = (int(i) for i in op.InputsAsNumpy()[:2])
    if graph.shape(points_i)[-1] != 2:
        raise ConversionError("TransformLandmarks is handled for 2D points only")
    flat = graph.node("Reshape", [graph.value(matrix_i), graph.ints([16])])
    linear = graph.node(
        "Reshape",
        [
            graph.node("Gather", [flat, graph.ints([0, 4, 1, 5])]),
            graph.ints([2, 2]),
        ],
    )
    shift = graph.node(
        "Reshape",
        [
            graph.node("Gather", [flat, graph.ints([3, 7])]),
            graph.ints([1, 1, 2]),
        ],
    )
    out = graph.node("Add", [graph.node("MatMul", [graph.value(points_i), linear]), shift])
    graph.store(int(op.OutputsAsNumpy()[0]), out, True)


def convert(tflite_path: Path) -> onnx.ModelProto:
    """Read a TF Lite face model and return the equivalent ONNX model (checked)."""
    import tflite
    from flatbuffers import flexbuffers

    buffer = tflite_path.read_bytes()
    model = tflite.Model.GetRootAsModel(buffer, 0)
    if model.SubgraphsLength() != 1:
        raise ConversionError("only single-graph models are handled")
    subgraph = model.Subgraphs(0)
    graph = _Graph(model, subgraph)
    names = _builtin_names()

    inputs = []
    for k in range(subgraph.InputsLength()):
        index = int(subgraph.Inputs(k))
        name = subgraph.Tensors(index).Name().decode()
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, graph.shape(index)))
        graph.store(index, name, True)

    handlers: dict[str, Callable[[Any], None]] = {
        "CONV_2D": lambda op: _conv(graph, op, depthwise=False),
        "DEPTHWISE_CONV_2D": lambda op: _conv(graph, op, depthwise=True),
        "MAX_POOL_2D": lambda op: _max_pool(graph, op),
        "ADD": lambda op: _binary(graph, op, "Add", tflite.AddOptions),
        "MUL": lambda op: _binary(graph, op, "Mul", tflite.MulOptions),
        "PRELU": lambda op: _prelu(graph, op),
        "RELU": lambda op: graph.store(
            int(op.OutputsAsNumpy()[0]), graph.node("Relu", [graph.value(int(op.InputsAsNumpy()[0]))]), False
        ),
        "PAD": lambda op: _pad(graph, op),
        "RESHAPE": lambda op: _reshape(graph, op),
        "CONCATENATION": lambda op: _concat(graph, op),
        "STRIDED_SLICE": lambda op: _strided_slice(graph, op),
        "DEQUANTIZE": lambda op: _dequantize(graph, op),
    }
    customs: dict[str, Callable[[Any, dict[str, Any]], None]] = {
        "Landmarks2TransformMatrix": lambda op, o: _landmarks_to_matrix(graph, op, o),
        "TransformTensorBilinear": lambda op, o: _transform_tensor(graph, op, o),
        "TransformLandmarks": lambda op, o: _transform_landmarks(graph, op, o),
    }
    for k in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        if name == "CUSTOM":
            custom = code.CustomCode().decode()
            if custom not in customs or code.Version() != 2:
                raise ConversionError(f"custom operator {custom} v{code.Version()} is not handled")
            raw = bytes(op.CustomOptionsAsNumpy()) if op.CustomOptionsLength() else b""
            customs[custom](op, flexbuffers.Loads(raw) if raw else {})
        elif name in handlers:
            handlers[name](op)
        else:
            raise ConversionError(f"operator {name} is not handled")

    outputs = []
    for k in range(subgraph.OutputsLength()):
        index = int(subgraph.Outputs(k))
        name = subgraph.Tensors(index).Name().decode()
        graph.nodes.append(helper.make_node("Identity", [graph.nhwc(index)], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, graph.shape(index)))

    onnx_graph = helper.make_graph(graph.nodes, tflite_path.stem, inputs, outputs, graph.initializers)
    result = helper.make_model(
        onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="stableface tflite_to_onnx"
    )
    result.ir_version = 8
    onnx.checker.check_model(result, full_check=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tflite", type=Path)
    parser.add_argument("onnx", type=Path)
    args = parser.parse_args(argv)
    try:
        model = convert(args.tflite)
    except (ConversionError, OSError) as error:
        sys.stderr.write(f"tflite_to_onnx: error: {error}\n")
        return 1
    args.onnx.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.onnx.with_suffix(".partial")
    onnx.save(model, temporary)
    temporary.replace(args.onnx)
    sys.stdout.write(f"wrote {args.onnx} ({args.onnx.stat().st_size // 1024} KiB)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
