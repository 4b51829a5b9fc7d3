"""The names that changed between the transformers releases a saved model may run under.

transformers 5.24 renamed the generation cache from `past_key_values` to `cache`: in what
`generate` passes to `forward`, in the masking utilities' parameters and in the fields of model
outputs (reading or writing the old name still works there, with a deprecation warning). A
model's code travels with its checkpoint (`trust_remote_code`) and runs under whatever
transformers its user has, so it asks the installed release which name it speaks instead of
assuming one. Delete this module once the oldest allowed transformers is 5.24 or newer.

This file is copied next to saved checkpoints: it imports torch and transformers only.
"""

import dataclasses
import inspect
from typing import Any

from transformers.cache_utils import Cache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast

# "cache" from transformers 5.24 on, "past_key_values" before: the field of model outputs...
OUTPUT_CACHE_FIELD: str = (
    "cache"
    if "cache" in {field.name for field in dataclasses.fields(BaseModelOutputWithPast)}
    else "past_key_values"
)
# ...and the parameter of `masking_utils.create_*_mask`
MASK_CACHE_ARG: str = (
    "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
)


def resolve_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache a caller passed under either name (`generate` uses `cache` from 5.24 on)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("Pass the cache once, as `cache` (or `past_key_values`), not as both")
    return cache if cache is not None else past_key_values


def cache_field(cache: Cache | None) -> dict[str, Any]:
    """`{name: cache}` to build a model output under the installed release's field name."""
    return {OUTPUT_CACHE_FIELD: cache}


def mask_cache_arg(cache: Cache | None) -> dict[str, Any]:
    """`{name: cache}` for the installed release's `create_*_mask` functions."""
    return {MASK_CACHE_ARG: cache}


def output_cache(outputs: Any) -> Cache | None:
    """The cache of a model output, read without a deprecation warning."""
    return getattr(outputs, OUTPUT_CACHE_FIELD, None)
