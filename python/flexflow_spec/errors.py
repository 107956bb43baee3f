"""Typed exceptions. Each C status maps to one class; messages come from the core."""
from __future__ import annotations


class FlexFlowSpecError(Exception):
    """Base class of every error raised by flexflow_spec."""


class InvalidArgumentError(FlexFlowSpecError, ValueError):
    """A bad setting, prompt or generation parameter."""


class ModelNotFoundError(FlexFlowSpecError, FileNotFoundError):
    """The model path (or a file it needs) does not exist."""


class CheckpointError(FlexFlowSpecError, ValueError):
    """A malformed config.json, a missing or mis-shaped tensor."""


class UnsupportedModelError(CheckpointError):
    """An architecture, tensor type or option this build does not run."""


class OutOfMemoryError(FlexFlowSpecError, MemoryError):
    """A memory pool is too small; the message names the setting to raise."""


class StateError(FlexFlowSpecError):
    """A call out of order, e.g. generate() before compile()."""


class InternalError(FlexFlowSpecError):
    """A bug in flexflow_spec; please report it with the message."""


class NumericalError(FlexFlowSpecError, ArithmeticError):
    """A request's logits held NaN or +inf (an activation overflowed, e.g. in fp16, or the
    checkpoint holds NaN/inf weights): that request fails, the others go on."""


# index = ffs_status_t value
STATUS_ERRORS = [None, InvalidArgumentError, ModelNotFoundError, CheckpointError,
                 UnsupportedModelError, OutOfMemoryError, StateError, InternalError, NumericalError]
