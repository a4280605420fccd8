"""lamina: a compiler for PyTorch models.

    import lamina
    fast = lamina.compile(model, example_inputs)   # CompiledModule, called like the model
    graph = lamina.trace(model, example_inputs)    # the IR; print(graph) shows its text form
"""
from .api import compile, trace
from .errors import InputMismatchError, LaminaError, UnsupportedOpsError
from .ir import Graph, parse
from .options import CompileOptions
from .passes.manager import default_pipeline, run_pipeline
from .runtime.compiled import CompiledModule

__version__ = "0.1.0"

__all__ = [
    "CompileOptions", "CompiledModule", "Graph", "InputMismatchError", "LaminaError", "UnsupportedOpsError",
    "compile", "default_pipeline", "parse", "run_pipeline", "trace", "__version__",
]
