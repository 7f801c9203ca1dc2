"""Debug check of the CUDA-graph input contract of the compiled draft model.

vLLM captures the draft's CUDA graphs with ``cudagraph_copy_inputs=False``:
every tensor handed to a compiled module must sit at the same address on
every call of the same size, or graph replays read stale memory. vLLM checks
this only on GPU at DEBUG log level. This check runs on any device, compiled
or eager: set ``VLLM_PARD2_CHECK_DRAFT_INPUTS=/path/report.json`` and every
compiled module inside the draft records, per (argument, token count), the
address it was given. A second address raises at once (the engine fails with
the argument named), and the JSON report lists what was seen, so a test can
show the check covered the inputs it cares about.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any

import torch
from torch import nn

ENV_VAR = "VLLM_PARD2_CHECK_DRAFT_INPUTS"


class InputAddressViolation(RuntimeError):
    """A compiled draft module got an input at a new address for a size it has seen."""


class AddressRecorder:
    """Addresses seen per module, argument name and leading size."""

    def __init__(self, report_path: str) -> None:
        self.report_path = report_path
        self.seen: dict[str, dict[str, dict[int, int]]] = {}
        self.calls = 0

    def record(self, module_name: str, arguments: dict[str, Any]) -> None:
        self.calls += 1
        changed = False
        for name, value in arguments.items():
            if not isinstance(value, torch.Tensor):
                continue
            size = int(value.shape[-1] if name == "positions" else value.shape[0])
            by_size = self.seen.setdefault(module_name, {}).setdefault(name, {})
            address = value.data_ptr()
            if size not in by_size:
                by_size[size] = address
                changed = True
                continue
            known = by_size[size]
            if known == address:
                continue
            self._write(violation=f"{module_name}: {name} for {size} tokens moved from {known:#x} to {address:#x}")
            raise InputAddressViolation(
                f"pard2: compiled draft module {module_name} got '{name}' for {size} tokens at "
                f"{address:#x}, earlier at {known:#x}. Inputs of a CUDA-graph-captured model must "
                "live in persistent buffers (cudagraph_copy_inputs=False)."
            )
        if changed:
            self._write()

    def _write(self, violation: str | None = None) -> None:
        report = {
            "calls": self.calls,
            "violation": violation,
            "modules": {
                module: {
                    name: {str(size): f"{addr:#x}" for size, addr in sizes.items()} for name, sizes in args.items()
                }
                for module, args in self.seen.items()
            },
        }
        with open(self.report_path, "w") as f:
            json.dump(report, f, indent=1)


def install_if_requested(draft: nn.Module) -> AddressRecorder | None:
    """Wrap every compiled module of ``draft`` with an address check when
    ``VLLM_PARD2_CHECK_DRAFT_INPUTS`` names a report file; no-op otherwise.

    vLLM's compiled modules override ``__call__`` (forward hooks never run), so
    each instance gets a subclass whose ``__call__`` records and then calls on.
    """
    path = os.environ.get(ENV_VAR)
    if not path:
        return None
    from vllm.compilation.wrapper import TorchCompileWithNoGuardsWrapper

    recorder = AddressRecorder(path)
    for module_name, module in draft.named_modules():
        if not isinstance(module, TorchCompileWithNoGuardsWrapper):
            continue
        base = type(module)
        signature = inspect.signature(module.forward)

        def __call__(self, *args, _base=base, _sig=signature, _name=module_name or "draft", **kwargs):
            recorder.record(_name, _sig.bind_partial(*args, **kwargs).arguments)
            return _base.__call__(self, *args, **kwargs)

        module.__class__ = type(f"AddressChecked{base.__name__}", (base,), {"__call__": __call__})
    recorder._write()
    return recorder
