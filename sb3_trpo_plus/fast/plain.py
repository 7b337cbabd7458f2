"""
What a fast path may trust: objects that behave as their classes say (no module hook, no method
replaced on an instance), and a cheap fingerprint to notice when user code changes that.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import FunctionType, MethodType
from typing import Any

import torch as th
from torch import nn
from torch.nn.modules import module as module_globals


def _shadowed_methods(obj: Any) -> list[str]:
    """Names of methods of ``obj``'s class replaced on the instance itself (``obj.forward = ...``)."""
    cls = type(obj)
    return [name for name in vars(obj) if isinstance(getattr(cls, name, None), (FunctionType, MethodType))]


_GLOBAL_MODULE_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def global_module_hooks() -> list[dict]:
    """torch's global module hooks (``nn.modules.module.register_module_forward_hook`` and the like)."""
    return [getattr(module_globals, name) for name in _GLOBAL_MODULE_HOOKS if hasattr(module_globals, name)]


def plain_modules(objects: list[Any], backward: bool = False) -> bool:
    """
    Whether ``objects`` (modules and other objects a fast path reads) behave as their classes
    say: no forward hook or pre-hook (backward ones too with ``backward=True``), module-level or
    global, and no method replaced on an instance. A fast path that reimplements the classes'
    arithmetic must not serve objects that are not plain: the generic torch path honours all this.
    """
    if any(global_module_hooks()[: 4 if backward else 2]):
        return False
    for obj in objects:
        if _shadowed_methods(obj):
            return False
        if isinstance(obj, nn.Module):
            if obj._forward_hooks or obj._forward_pre_hooks:
                return False
            if backward and (obj._backward_hooks or obj._backward_pre_hooks):
                return False
    return True


class Watch:
    """
    A cheap fingerprint of what a forward-only fast path copied or trusts: the number of forward
    hooks and instance attributes of every object (a new hook or an instance patch adds one), and
    the storage and (with ``versions``) version counter of every parameter (an in-place edit
    under ``no_grad``, an optimizer step or ``load_state_dict`` bumps the version;
    ``param.data = ...`` changes the storage). Compare :meth:`signature` before and after user
    code ran.
    """

    def __init__(self, objects: list[Any], params: Sequence[th.Tensor], versions: bool = True) -> None:
        self.dicts: list[dict] = [*global_module_hooks()[:2]]
        for obj in objects:
            self.dicts.append(vars(obj))
            if isinstance(obj, nn.Module):
                self.dicts += [obj._forward_hooks, obj._forward_pre_hooks]
        self.params = params
        self.versions = versions  # not needed by a reader of NumPy views, which sees in-place edits
        self.pointers = [p.data_ptr for p in params]  # bound once: this runs every step
        self.initial = self.signature()

    def signature(self) -> tuple:
        return (
            sum(map(len, self.dicts)),
            [p._version for p in self.params] if self.versions else None,
            [pointer() for pointer in self.pointers],
        )

    def changed(self) -> bool:
        return self.signature() != self.initial
