"""ONNX graph facts the int8 steps share: which float tensor a DequantizeLinear stands for, the classifier, the
convs that read the image."""
from __future__ import annotations

DQ_SUFFIX = "_DequantizeLinear_Output"  # ONNX Runtime's QDQ quantizer names a dequantized tensor X this way
DATA_MOVEMENT = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity"}
COMPUTE = {"Conv", "Gemm", "MatMul"}


def float_sources(qm) -> dict[str, str]:
    """DequantizeLinear output -> the float tensor (activation or weight) it stands for in the float graph."""
    return {n.output[0]: n.output[0][: -len(DQ_SUFFIX)] for n in qm.graph.node
            if n.op_type == "DequantizeLinear" and n.output[0].endswith(DQ_SUFFIX)}


def input_conv_weights(model) -> list[str]:
    """The weight tensors of the convs that read the network's input directly (the stem)."""
    inputs = {i.name for i in model.graph.input}
    return [n.input[1] for n in model.graph.node if n.op_type == "Conv" and n.input[0] in inputs]


def classifier(model) -> str | None:
    """The compute node whose output is the logits (through Flatten/Reshape and the like): kept in float, so the
    logits are not rounded to 256 levels (a range averaged over images clips the winning logit, ties follow)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    tensor = model.graph.output[0].name
    while tensor in producer:
        node = producer[tensor]
        if node.op_type in COMPUTE:
            return node.name
        if node.op_type not in DATA_MOVEMENT:
            return None
        tensor = node.input[0]
    return None
