"""Errors users can act on. Re-exported from the cost model so both layers raise one type."""

from costmodel.errors import UserInputError

__all__ = ["UserInputError"]
