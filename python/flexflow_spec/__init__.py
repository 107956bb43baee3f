"""flexflow_spec: LLM serving with speculative inference and token tree verification,
on a C++ runtime built on Legion."""
from .errors import (
                     CheckpointError,
                     FlexFlowSpecError,
                     InternalError,
                     InvalidArgumentError,
                     ModelNotFoundError,
                     NumericalError,
                     OutOfMemoryError,
                     StateError,
                     UnsupportedModelError,
)
from .runtime import gpu_info, init
from .serve import LLM, SSM, DataType, GenerationConfig, GenerationResult, SpeculationConfig
from .tokenizer import Tokenizer

__version__ = "0.1.0"

__all__ = [
    "init", "gpu_info", "LLM", "SSM", "Tokenizer", "SpeculationConfig", "DataType", "GenerationConfig",
    "GenerationResult",
    "FlexFlowSpecError", "InvalidArgumentError", "ModelNotFoundError", "CheckpointError",
    "UnsupportedModelError", "OutOfMemoryError", "StateError", "InternalError",
    "NumericalError",
]
