"""Binary masks as COCO's *uncompressed* run-length encoding, the JSON API's mask format.

Chosen so that clients decode with `pycocotools.mask.decode(frPyObjects(rle, h, w))` or ten lines of numpy:
`{"size": [h, w], "counts": [c0, c1, ...]}` where the pixels are read in column-major (Fortran) order and the
counts are alternating run lengths, starting with a run of 0s (of length 0 when the first pixel is set).
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral
from typing import Any

import numpy as np

from service.errors import RequestError

__all__ = ["decode_rle", "encode_rle"]


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """HxW mask (bool, or any dtype where nonzero is foreground) -> `{"size": [h, w], "counts": [...]}`."""
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D (h, w) mask, found an array of shape {mask.shape}")
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return {"size": [h, w], "counts": [0]}
    # Run boundaries: where a pixel differs from its predecessor. A virtual 0 before the first pixel makes the
    # first run a run of 0s (empty when the mask starts with a 1), as COCO requires.
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(edges)
    if flat[0]:
        counts = np.concatenate(([0], counts))
    return {"size": [int(h), int(w)], "counts": counts.tolist()}


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """`{"size": [h, w], "counts": [...]}` (uncompressed COCO RLE) -> HxW bool mask; malformed input is a 400."""
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise RequestError("expected an RLE object with 'size' and 'counts', found something else")
    size, counts = rle["size"], rle["counts"]
    if not (isinstance(size, list | tuple) and len(size) == 2 and all(_is_count(v) for v in size)):
        raise RequestError("expected the RLE 'size' to be two non-negative integers [h, w], found something else")
    if not (isinstance(counts, list | tuple) and all(_is_count(c) for c in counts)):
        raise RequestError("expected the RLE 'counts' to be a list of non-negative integers, found something else")
    h, w = int(size[0]), int(size[1])
    total = sum(int(c) for c in counts)  # Python ints: no overflow before the check
    if total != h * w:
        raise RequestError(f"expected the RLE counts to sum to h*w = {h * w}, found {total}")
    runs = np.asarray(counts, dtype=np.int64)
    values = np.zeros(runs.size, dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape((h, w), order="F")


def _is_count(value: object) -> bool:
    """A JSON integer >= 0 (bool is an int in Python but not a count)."""
    return isinstance(value, Integral) and not isinstance(value, bool) and int(value) >= 0
