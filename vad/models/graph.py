"""A frozen backbone saved as a small graph of plain torch modules, loaded without timm or anomalib.

Importing timm costs about 3.4 s on this machine (it pulls in torchvision and ``torch._dynamo``) and
anomalib's models another 6 s or more; a trained model only needs its backbone's arithmetic. At
training time the batch-norm-folded backbone is traced with ``torch.fx`` (timm's own leaf modules
and functions kept whole) and written as JSON (the graph and each module's settings) plus
safetensors (its weights). Loading rebuilds the same graph from an allowlist of torch modules and
functions: nothing is unpickled and no code is read from the file.
"""

from __future__ import annotations

import json
import operator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import load_file, save_file
from torch import fx, nn
from torch.fx.node import Argument

GRAPH_FILE = "backbone_graph.json"
GRAPH_WEIGHTS = "backbone.safetensors"
FORMAT = 1


class SamePadConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding (timm's ``Conv2dSame``): pad so that out = ceil(in / stride)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad (more on the bottom and right when uneven), then convolve.

        Args:
            x: Input (B, C, H, W).

        Returns:
            The convolution's output.
        """
        pads = []
        for size, kernel, stride, dilation in zip(
            x.shape[-2:], self.kernel_size, self.stride, self.dilation, strict=True
        ):
            total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        x = F.pad(x, [pads[1][0], pads[1][1], pads[0][0], pads[0][1]])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv_settings(module: nn.Conv2d) -> dict[str, Any]:
    return {
        "in_channels": module.in_channels,
        "out_channels": module.out_channels,
        "kernel_size": list(module.kernel_size),
        "stride": list(module.stride),
        "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
        "dilation": list(module.dilation),
        "groups": module.groups,
        "bias": module.bias is not None,
        "padding_mode": module.padding_mode,
    }


# Module types a graph may hold: how to describe one, and how to build it again.
_DESCRIBE = {
    "Conv2d": _conv_settings,
    "Conv2dSame": _conv_settings,
    "Identity": lambda m: {},
    "Dropout": lambda m: {},
    "ReLU": lambda m: {"inplace": m.inplace},
    "ReLU6": lambda m: {"inplace": m.inplace},
    "SiLU": lambda m: {"inplace": m.inplace},
    "Hardswish": lambda m: {"inplace": m.inplace},
    "MaxPool2d": lambda m: {
        key: getattr(m, key) for key in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
    },
    "BatchNorm2d": lambda m: {"num_features": m.num_features, "eps": m.eps},
}
_BUILD = {
    "Conv2d": lambda s: nn.Conv2d(**s),
    "Conv2dSame": lambda s: SamePadConv2d(**{**s, "padding": 0}),
    "Identity": lambda s: nn.Identity(),
    "Dropout": lambda s: nn.Identity(),  # eval mode: dropout is the identity
    "ReLU": lambda s: nn.ReLU(**s),
    "ReLU6": lambda s: nn.ReLU6(**s),
    "SiLU": lambda s: nn.SiLU(**s),
    "Hardswish": lambda s: nn.Hardswish(**s),
    "MaxPool2d": lambda s: nn.MaxPool2d(**s),
    "BatchNorm2d": lambda s: nn.BatchNorm2d(**s),
}
_FUNCTIONS = {"operator.add": operator.add, "operator.mul": operator.mul, "operator.getitem": operator.getitem}


def _function_name(target: object) -> str:
    for name, function in _FUNCTIONS.items():
        if target is function:
            return name
    msg = f"the backbone graph calls {target!r}, which the graph format does not hold"
    raise ValueError(msg)


def _encode(value: object) -> object:
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, (list, tuple)):
        return [_encode(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    msg = f"the backbone graph has an argument {value!r} the graph format does not hold"
    raise ValueError(msg)


def _decode(value: object, nodes: dict[str, fx.Node]) -> Argument:
    if isinstance(value, dict):
        return nodes[value["node"]]
    if isinstance(value, list):
        return tuple(_decode(item, nodes) for item in value)
    if value is None or isinstance(value, str | int | float):  # bool is an int
        return value
    msg = f"{GRAPH_FILE} has a node argument {value!r} the graph format does not hold"
    raise ValueError(msg)


def _decode_args(value: object, nodes: dict[str, fx.Node]) -> tuple[Argument, ...]:
    decoded = _decode(value, nodes)
    if not isinstance(decoded, tuple):
        msg = f"{GRAPH_FILE} has node arguments {value!r} that are not a list"
        raise ValueError(msg)
    return decoded


def export_graph(backbone: nn.Module, folder: Path) -> None:
    """Trace a frozen (folded) backbone and write ``backbone_graph.json`` and ``backbone.safetensors``.

    Args:
        backbone: The backbone in eval mode (timm's features-only network, batch norms folded).
        folder: ``models/train``.

    Raises:
        ValueError: The backbone uses a module or function outside the allowlist.
    """
    from timm.layers import _fx

    class Tracer(fx.Tracer):
        def is_leaf_module(self, module: nn.Module, name: str) -> bool:
            return type(module) in _fx._leaf_modules or super().is_leaf_module(module, name)

    graph = Tracer(autowrap_functions=tuple(_fx._autowrap_functions)).trace(backbone)
    modules, nodes, state = {}, [], {}
    for node in graph.nodes:
        entry: dict[str, Any] = {"name": node.name, "op": node.op}
        if node.op == "call_module":
            module = backbone.get_submodule(node.target)
            kind = type(module).__name__
            if kind not in _DESCRIBE:
                msg = f"the backbone holds a {kind} ({node.target}), which the graph format does not hold"
                raise ValueError(msg)
            modules[node.target] = {"type": kind, "settings": _DESCRIBE[kind](module)}
            state.update({f"{node.target}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
            entry["target"] = node.target
        elif node.op == "call_function":
            entry["target"] = _function_name(node.target)
        elif node.op != "placeholder" and node.op != "output":
            msg = f"the backbone graph has a {node.op} node ({node.target}), which the graph format does not hold"
            raise ValueError(msg)
        entry["args"] = _encode(node.args)
        if node.kwargs:
            entry["kwargs"] = {key: _encode(value) for key, value in node.kwargs.items()}
        nodes.append(entry)
    description = {"format": FORMAT, "modules": modules, "nodes": nodes}
    (folder / GRAPH_FILE).write_text(json.dumps(description, indent=1) + "\n", encoding="utf-8")
    save_file(state, str(folder / GRAPH_WEIGHTS))


def load_graph(folder: Path) -> fx.GraphModule:
    """Rebuild the backbone :func:`export_graph` wrote, from torch modules only.

    Args:
        folder: ``models/train``.

    Returns:
        The backbone in eval mode, returning the same feature maps.

    Raises:
        ValueError: The file names a module, function or node kind outside the allowlist.
    """
    description = json.loads((folder / GRAPH_FILE).read_text(encoding="utf-8"))
    if description.get("format") != FORMAT:
        msg = f"{GRAPH_FILE} has format {description.get('format')!r}, this release reads {FORMAT}"
        raise ValueError(msg)
    state = load_file(str(folder / GRAPH_WEIGHTS))
    root: dict[str, nn.Module] = {}
    for path, module in description["modules"].items():
        if module["type"] not in _BUILD:
            msg = f"{GRAPH_FILE} names a module type {module['type']!r} outside the allowlist"
            raise ValueError(msg)
        built = _BUILD[module["type"]](module["settings"])
        built.load_state_dict({k.removeprefix(f"{path}."): v for k, v in state.items() if k.startswith(f"{path}.")})
        root[path] = built
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    for entry in description["nodes"]:
        args = _decode_args(entry.get("args", []), nodes)
        kwargs = {key: _decode(value, nodes) for key, value in entry.get("kwargs", {}).items()}
        op = entry["op"]
        if op == "placeholder":
            node = graph.placeholder(entry["name"])
        elif op == "call_module":
            node = graph.call_module(entry["target"], args, kwargs)
        elif op == "call_function" and entry["target"] in _FUNCTIONS:
            node = graph.call_function(_FUNCTIONS[entry["target"]], args, kwargs)
        elif op == "output":
            node = graph.output(args[0])
        else:
            msg = f"{GRAPH_FILE} has a node {op} {entry.get('target')!r} outside the allowlist"
            raise ValueError(msg)
        nodes[entry["name"]] = node
    backbone = fx.GraphModule(root, graph).eval()
    backbone.requires_grad_(False)
    return backbone
