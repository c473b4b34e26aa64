"""The base class of every config section: strict (unknown keys are errors) and frozen once validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    """A validated, immutable piece of an experiment config."""

    # allow_inf_nan=False: every float is a rate, weight, size or threshold, and `gt=0` alone lets .inf through
    # (null turns an optional limit off)
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, protected_namespaces=(), allow_inf_nan=False
    )
