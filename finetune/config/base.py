"""The base of every schema section."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every schema section: unknown keys are errors, docstrings document fields,
    and no float may be NaN or infinite (`train.lr: .inf` would pass as a positive number)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)
