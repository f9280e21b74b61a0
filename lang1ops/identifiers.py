"""Identifier formats every package checks, defined once.

FHIR's `id` datatype (R4 2.24.0.3): 1-64 characters of letters, digits, '-' and '.'. An id that
does not fit is refused at the edge (4xx), so nothing downstream (store keys, references,
file names) ever sees one.
"""

from __future__ import annotations

import re

FHIR_ID_CHARS = r"[A-Za-z0-9\-.]{1,64}"  # for composing larger patterns (references, keys)
FHIR_ID = re.compile(FHIR_ID_CHARS)


def is_fhir_id(value: object) -> bool:
    """Whether `value` is a string in FHIR's id format (the whole string)."""
    return isinstance(value, str) and FHIR_ID.fullmatch(value) is not None
