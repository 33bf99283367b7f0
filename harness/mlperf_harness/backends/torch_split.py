"""Waits for the GPU during a call, and the split capture: a graph whose call waits (ssd's
detections are data-sized, rnnt's encoder reads its lengths back) is cut before its first wait
(``split_at``): the part before it captured in CUDA graphs, the rest run eagerly on its outputs.
On the CPU, ``WouldWait`` stands in for torch's sync debug mode (``gpu_waits``). The split capture
ran on an H200 with ssd (2026-12-05, BENCHMARKS.md: its graph up to NMS, 81 ops captured, 55 eager).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .torch_rewrites import host_readers, host_values


@contextmanager
def gpu_waits() -> Iterator[None]:
    """Within: an operation that waits for the GPU raises (torch's sync debug mode)."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


WAITING_OPS = (  # a value read back, or an output sized by the data
    *("aten.nonzero", "aten.masked_select", "aten._unique", "aten.unique", "aten._local_scalar_dense", "aten.item"),
    *("aten.is_nonzero", "aten.equal", "aten.repeat_interleave.Tensor", "torchvision.nms"),
)


class WouldWait(TorchDispatchMode):
    """The CPU's stand-in for ``gpu_waits`` (tests and counts, through ``_run_waiting``; no GPU path
    uses it): ``on_wait(op, args)`` at each operation that waits for a GPU where its tensors are on
    one: a value read back (item, a tensor as a Python number or bool), an output sized by the data
    (nonzero, a boolean mask's selection, unique, NMS). The default raises. Not seen at this level:
    ``tolist`` (a list read back), and whether a value read lives on the host on a GPU."""

    def __init__(self, on_wait: Callable[[str, Any], None] | None = None) -> None:
        super().__init__()
        self.on_wait = on_wait or self._raise

    @staticmethod
    def _raise(op: str, args: Any) -> None:
        raise RuntimeError(f"{op} would wait for the GPU")

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        op = str(func)
        indices = list(args[1]) if op.startswith(("aten.index.", "aten.index_put")) else []
        masks = any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)
        if masks or op.startswith(WAITING_OPS):
            self.on_wait(op, args)
        return func(*args, **(kwargs or {}))


class _Tracker(torch.fx.Interpreter):
    """Runs an fx graph, keeping in ``current[0]`` the node it is running (where a wait happened)."""

    def __init__(self, model: Any, current: list[Any]) -> None:
        super().__init__(model)
        self.current = current

    def run_node(self, n: Any) -> Any:
        self.current[0] = n
        return super().run_node(n)


def _run_waiting(model: Any, inputs: Sequence[Any], on_wait: Callable[[Any, str], None]) -> None:
    """Run ``model`` on the CPU, ``on_wait(node, op)`` at each wait a GPU would have (``WouldWait``
    and ``tolist``) but for reads of the values a GPU keeps on the host (``host_values``): those
    inside such a node, or a node whose arguments read as Python values (``host_readers``) all are."""
    from torch.overrides import TorchFunctionMode

    host, readers = host_values(model), host_readers()
    current: list[Any] = [None]

    def reads_host(node: Any) -> bool:
        module = model.get_submodule(str(node.target)) if node.op == "call_module" else None
        wanted = readers.get(type(module))
        if wanted is None:
            return False
        args = [a for i, a in enumerate(node.args) if i in wanted] + [v for k, v in node.kwargs.items() if k in wanted]
        return all(a in host for a in args if isinstance(a, torch.fx.Node))

    def wait(op: str, args: Any) -> None:
        read = op.startswith(("aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal", "tolist"))
        if not read or not (current[0] in host or reads_host(current[0])):
            on_wait(current[0], op)

    class Lists(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func is torch.Tensor.tolist:
                wait("tolist", args)
            return func(*args, **(kwargs or {}))

    with torch.inference_mode(), Lists(), WouldWait(wait):
        _Tracker(model, current).run(*inputs)


def count_waits(model: Any, inputs: Sequence[Any]) -> dict[str, int]:
    """The waits for the GPU a call of ``model`` would have, per node, counted on the CPU
    (``_run_waiting``). An estimate for tests and reports (a library's own waits inside an op, as
    NMS's, count as one; a node's reads as many as it makes, host values among them or not); on a
    GPU, torch's sync debug mode counts them."""
    counts: dict[str, int] = {}

    def count(node: Any, op: str) -> None:
        counts[node.name] = counts.get(node.name, 0) + 1

    _run_waiting(model, inputs, count)
    return counts


def first_wait(model: Any, inputs: Sequence[Any], detect: Any = None) -> tuple[str, str]:
    """The node of ``model`` (an fx.GraphModule) during which a call on ``inputs`` first waits for
    the GPU, and the wait's message; ("", "") where none does. ``detect``: a context in which a wait
    raises (``gpu_waits()``); None: on the CPU, what would wait on a GPU (``_run_waiting``)."""
    current: list[Any] = [None]

    def stop(node: Any, op: str) -> None:
        current[0] = node
        raise RuntimeError(f"{op} would wait for the GPU")

    try:
        if detect is None:
            _run_waiting(model, inputs, stop)
        else:
            with detect:
                _Tracker(model, current).run(*inputs)
    except RuntimeError as exc:
        return getattr(current[0], "name", ""), str(exc).splitlines()[0][:160]
    return "", ""


@dataclass
class Split:
    """A graph cut before ``at``, its first node that waits for the GPU: ``prefix`` (the graph's
    inputs -> the values the rest uses) is captured in CUDA graphs, ``suffix`` (those values -> the
    graph's outputs) runs eagerly; ``ops``: how many operations each has."""

    prefix: Any
    suffix: Any
    at: str
    ops: tuple[int, int]

    def describe(self) -> str:
        return f"CUDA graph up to {self.at} ({self.ops[0]} ops), eagerly from there ({self.ops[1]} ops)"


def split_at(model: Any, name: str) -> Split | None:
    """``model`` cut before its node ``name``: the prefix is every node before it in the graph's
    order (none of them ran into a wait before it), returning the values that later nodes use
    (constants are read in the suffix itself); None where no operation comes before it."""
    nodes = list(model.graph.nodes)
    cut = next(i for i, n in enumerate(nodes) if n.name == name)
    before = set(nodes[:cut])

    def ops(part: Sequence[Any]) -> int:
        return sum(n.op in ("call_module", "call_function", "call_method") for n in part)

    if not ops(nodes[:cut]):
        return None
    carried = [n for n in nodes[:cut] if n.op != "get_attr" and any(u not in before for u in n.users)]
    prefix = torch.fx.Graph()
    env: dict[Any, Any] = {}
    for n in nodes[:cut]:
        env[n] = prefix.node_copy(n, env.__getitem__)
    prefix.output(tuple(env[n] for n in carried))
    suffix = torch.fx.Graph()
    env = {n: suffix.placeholder(n.name) for n in carried}
    for n in nodes[cut:]:
        for arg in n.all_input_nodes:
            if arg not in env:  # a constant before the cut
                env[arg] = suffix.node_copy(arg, env.__getitem__)
        env[n] = suffix.node_copy(n, env.__getitem__)
    head, tail = torch.fx.GraphModule(model, prefix), torch.fx.GraphModule(model, suffix)
    head.graph.eliminate_dead_code()  # nodes that only the rest used
    head.delete_all_unused_submodules()
    head.recompile()
    return Split(head, tail, name, (ops(list(head.graph.nodes)), ops(nodes[cut:])))


def batch_rows(prefix: Any, inputs: Sequence[Any]) -> tuple[bool | None, ...]:
    """How each of the prefix's outputs follows the batch, from the prefix run on one row and on two
    of the inputs' first row: True, it leads with the batch (a padded batch's are cut to its rows
    before the suffix); False, the same for any batch; None, it differs otherwise (a padded batch
    would change it: batches are then not padded)."""
    one = prefix(*(x[:1] for x in inputs))
    two = prefix(*(torch.cat([x[:1], x[:1]]) for x in inputs))
    rows: list[bool | None] = []
    for a, b in zip(one, two, strict=True):
        tensors = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        if tensors and a.dim() and (len(a), len(b)) == (1, 2) and a.shape[1:] == b.shape[1:]:
            rows.append(True)
        elif torch.equal(a, b) if tensors else isinstance(a, int | float | bool) and a == b:
            rows.append(False)
        else:
            rows.append(None)
    return tuple(rows)
