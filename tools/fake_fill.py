"""Fill values of fake tensors: the tensors the memory estimator knows to hold one value everywhere.

Fake tensors (``torch._subclasses.fake_tensor``) have shapes and no values, so a scalar read of one
(``bool(mask.all())``, ``int(mask.sum(dim=1).max())``) fails with ``DataDependentOutputException``. The estimator's
stand-in tokenizer returns token ids that are all zeros and pads nothing, so the token masks compared from them are
all True. ``FillValues`` follows such tensors from their fill (``torch.zeros``, ``torch.full``, ...) through views,
copies, concatenation, a comparison with a number and reductions, and answers a scalar read of one with its value,
as a CUDA run with those tokens would. Qwen-Image's step reads its mask so (``cut_to_longest``, ``mask.all()``).

A tensor is known only while it is unmodified: its value is recorded with its version counter, which every in-place
write to it or to a view sharing its storage bumps. Anything else is unknown and its read fails as before.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

#: comparisons with a number: the result is the comparison of the fill value
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
}  # fmt: skip
#: ops whose output holds the fill value of their first argument (views, copies, rearrangements, max / min)
_SAME = frozenset({
    "slice", "select", "unsqueeze", "squeeze", "view", "_unsafe_view", "reshape", "expand", "clone", "detach",
    "alias", "_to_copy", "lift_fresh", "lift_fresh_copy", "t", "transpose", "permute", "repeat", "flip", "narrow",
    "amax", "amin", "max", "min",
})  # fmt: skip
#: factories and the value they fill with (an int) or the position of their fill argument (a str: "arg1")
_FILLS: dict[str, Any] = {
    "zeros": 0, "ones": 1, "zeros_like": 0, "ones_like": 1, "new_zeros": 0, "new_ones": 1,
    "full": "arg1", "full_like": "arg1", "new_full": "arg2",
}  # fmt: skip
_READS = frozenset({"_local_scalar_dense", "is_nonzero", "item"})


def _cast(value: Any, dtype: Any) -> Any:
    """``value`` as a tensor of ``dtype`` holds it (bool, int or float)."""
    import torch

    if dtype == torch.bool:
        return bool(value)
    if dtype.is_floating_point or dtype.is_complex:
        return float(value)
    return int(value)


class FillValues:
    """The known fill values of live tensors; ``read`` answers a scalar read, ``follow`` records an op's output."""

    def __init__(self) -> None:
        from torch.utils.weak import WeakIdKeyDictionary

        self.known: Any = WeakIdKeyDictionary()  # tensor -> (value, its version when recorded)

    def value(self, t: Any) -> tuple[bool, Any]:
        """(True, the fill value of ``t``) while it is known and unmodified, else (False, None)."""
        import torch

        if not isinstance(t, torch.Tensor):
            return False, None
        entry = self.known.get(t)
        if entry is None or entry[1] != t._version:
            return False, None
        return True, entry[0]

    def read(self, func: Any, args: tuple) -> tuple[bool, Any]:
        """(True, the Python value) when ``func`` reads the scalar of a known tensor (``.item()``, ``bool()``)."""
        if func.overloadpacket.__name__ not in _READS or not args:
            return False, None
        ok, value = self.value(args[0])
        return (True, _cast(value, args[0].dtype)) if ok else (False, None)

    def follow(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """Record ``out``'s fill value when ``func`` makes a tensor of one value from known ones (or from nothing)."""
        import torch

        if not isinstance(out, torch.Tensor):
            if func.overloadpacket.__name__ in ("max", "min") and isinstance(out, tuple) and out:
                out = out[0]  # max / min along a dimension: (values, indices); the values hold the fill
            else:
                return
        ok, value = self._output_value(func.overloadpacket.__name__, args, kwargs)
        if ok and not func._schema.is_mutable and out.numel() > 0:
            self.known[out] = (_cast(value, out.dtype), out._version)

    def _output_value(self, name: str, args: tuple, kwargs: dict) -> tuple[bool, Any]:
        import torch

        if name in _FILLS:
            fill = _FILLS[name]
            if isinstance(fill, str):
                i = int(fill[3:])
                return (True, args[i]) if len(args) > i and isinstance(args[i], (bool, int, float)) else (False, None)
            return True, fill
        if name == "cat":
            found = [self.value(t) for t in args[0] if t.numel() > 0]
            values = {v for ok, v in found if ok}
            return (True, values.pop()) if found and all(ok for ok, _ in found) and len(values) == 1 else (False, None)
        if not args:
            return False, None
        ok, value = self.value(args[0])
        if not ok:
            return False, None
        if name in _SAME:  # not with a second tensor (``max(a, b)``) or a reinterpreting dtype (``view(dtype)``)
            plain = not any(isinstance(a, (torch.Tensor, torch.dtype)) for a in args[1:])
            return (True, value) if plain else (False, None)
        if name in _COMPARE:
            other = args[1] if len(args) > 1 else None
            return (True, _COMPARE[name](value, other)) if isinstance(other, (bool, int, float)) else (False, None)
        if name in ("all", "any", "logical_not"):
            return True, (not value) if name == "logical_not" else bool(value)
        if name == "sum":
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            shape = args[0].shape
            if not shape:
                return True, value
            axes = range(len(shape)) if not dims else [d % len(shape) for d in dims]
            return True, value * math.prod(shape[d] for d in axes)
        return False, None
