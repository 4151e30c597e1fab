"""What a job store raises, and its URL with the password masked: shared by the store and its backends."""

from __future__ import annotations

import re
from typing import Final

from swarrow.errors import SwarrowError
from swarrow.urls import mask_url

__all__ = ["JobStoreError", "mask_store_url"]

# `password=`, `sslpassword=`, any case, in a query string or libpq's keyword form (`host=h password='a b'`).
_PASSWORD_PARAM: Final = re.compile(
    r"((?:^|[\s?&;])[a-z_]*password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&#;]*)", re.IGNORECASE
)


class JobStoreError(SwarrowError):
    """Raised when the job store cannot be reached, or refuses a query or a write."""


def mask_store_url(url: str) -> str:
    """`url` with any password replaced by `***`, whatever its shape (for logs and error messages)."""
    # The user-info part as every URL swarrow prints (a password may hold `/ ? # @`), then any
    # `password=` parameter (a query string's, `sslpassword`, libpq's `key=value` form).
    return _PASSWORD_PARAM.sub(r"\1***", mask_url(url))
