"""lamina: a compiler for PyTorch models.

    import lamina
    fast = lamina.compile(model, example_inputs)   # CompiledModule, called like the model
    graph = lamina.trace(model, example_inputs)    # the IR; print(graph) shows its text form
    stats = lamina.calibrate(model, batches)       # per-layer statistics (quantize{budget=...})
    lamina.generate(model, ids, 64, draft="skip{speedup=1.5}")  # self-speculative greedy decoding
    lamina.save(fast, "model.lamina"); fast = lamina.load("model.lamina")  # no tracing, kernels included
    state = lamina.ProgramState()                  # what skip{policy=router|temporal} keeps between calls
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_attributes

__version__ = "0.1.0"

# the public names, imported on first use: ``lamina --help`` and ``lamina opt`` do not wait for torch
_WHERE = {
    "compile": ".api", "trace": ".api", "InputMismatchError": ".errors", "LaminaError": ".errors",
    "UnsupportedOpsError": ".errors", "Graph": ".ir", "parse": ".ir", "CompileOptions": ".options",
    "default_pipeline": ".passes.manager", "run_pipeline": ".passes.manager", "CompiledModule": ".runtime.compiled",
    "calibrate": ".calibration", "Calibration": ".calibration", "QuantFormat": ".ir.quant_format",
    "load": ".saved", "save": ".saved", "ProgramState": ".runtime.state", "generate": ".speculative", "SpeculativeDecoder": ".speculative",
}

if TYPE_CHECKING:
    from .api import compile, trace
    from .calibration import Calibration, calibrate
    from .ir.quant_format import QuantFormat
    from .saved import load, save
    from .speculative import SpeculativeDecoder, generate
    from .errors import InputMismatchError, LaminaError, UnsupportedOpsError
    from .ir import Graph, parse
    from .options import CompileOptions
    from .passes.manager import default_pipeline, run_pipeline
    from .runtime.compiled import CompiledModule
    from .runtime.state import ProgramState


__getattr__ = lazy_attributes(__name__, _WHERE, globals())


def _register_dynamo_backend() -> None:
    """backend="lamina" for torch.compile. The package's ``torch_dynamo_backends`` entry point
    registers it without an import; here only when dynamo is already loaded (importing it
    costs over a second)."""
    import sys

    if "torch._dynamo" in sys.modules:
        from .dynamo import register

        register()


_register_dynamo_backend()

__all__ = [
    "Calibration", "CompileOptions", "CompiledModule", "Graph", "InputMismatchError", "LaminaError", "QuantFormat",
    "SpeculativeDecoder", "UnsupportedOpsError", "calibrate", "compile", "default_pipeline", "generate", "load", "save",
    "parse", "run_pipeline", "trace",
    "__version__",
]
