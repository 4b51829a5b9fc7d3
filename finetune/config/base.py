"""The base of every schema section."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every schema section: unknown keys are errors, docstrings document fields."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
