"""service/masks.py: COCO uncompressed RLE, checked against a slow hand reference (and pycocotools if present)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from service.errors import RequestError
from service.masks import decode_rle, encode_rle


def reference_counts(mask: np.ndarray) -> list[int]:
    """COCO's rleEncode, pixel by pixel: column-major scan, runs alternate from a (possibly empty) run of 0s."""
    h, w = mask.shape
    counts, current, run = [], False, 0
    for x in range(w):
        for y in range(h):
            pixel = bool(mask[y, x])
            if pixel != current:
                counts.append(run)
                current, run = pixel, 0
            run += 1
    counts.append(run)
    return counts


def edge_masks() -> dict[str, np.ndarray]:
    """Masks whose runs sit at the ends of the scan, where an off-by-one would show."""
    h, w = 7, 5
    masks = {"zero": np.zeros((h, w), bool), "one": np.ones((h, w), bool)}
    for name, (y, x) in {"first": (0, 0), "last": (h - 1, w - 1), "middle": (3, 2), "row0_col1": (0, 1)}.items():
        m = np.zeros((h, w), bool)
        m[y, x] = True
        masks[name] = m
        masks[f"all_but_{name}"] = ~m
    masks["single_pixel_image_on"] = np.ones((1, 1), bool)
    masks["single_pixel_image_off"] = np.zeros((1, 1), bool)
    masks["one_row"] = np.array([[0, 1, 1, 0, 1]], bool)
    masks["one_column"] = np.array([[1], [1], [0], [1]], bool)
    return masks


@pytest.mark.parametrize("name", sorted(edge_masks()))
def test_edge_masks_match_reference_and_round_trip(name: str) -> None:
    mask = edge_masks()[name]
    rle = encode_rle(mask)
    assert rle == {"size": list(mask.shape), "counts": reference_counts(mask)}
    assert sum(rle["counts"]) == mask.size
    assert all(c > 0 for c in rle["counts"][1:])  # only the first run may be empty
    decoded = decode_rle(rle)
    assert decoded.dtype == bool and np.array_equal(decoded, mask)


def test_column_major_convention_on_a_known_mask() -> None:
    # 2x3, set pixels at (row 0, col 1) and (row 1, col 1): in Fortran order 0 0 | 1 1 | 0 0.
    mask = np.array([[0, 1, 0], [0, 1, 0]], bool)
    assert encode_rle(mask)["counts"] == [2, 2, 2]
    assert encode_rle(mask.T)["counts"] == [1, 1, 2, 1, 1]  # 3x2: columns 0 1 0 | 0 1 0


@pytest.mark.parametrize("seed", range(5))
def test_random_masks_match_reference_and_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 40, size=2)
    mask = rng.random((h, w)) < rng.uniform(0.05, 0.95)
    rle = encode_rle(mask)
    assert rle["counts"] == reference_counts(mask)
    assert all(type(c) is int for c in rle["counts"])  # JSON-serialisable, not numpy scalars
    assert np.array_equal(decode_rle(rle), mask)


def test_non_bool_masks_are_foreground_where_nonzero() -> None:
    mask = np.array([[0, 3], [255, 0]], np.uint8)
    assert np.array_equal(decode_rle(encode_rle(mask)), mask > 0)


def test_agrees_with_pycocotools() -> None:
    coco = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(7)
    for _ in range(5):
        mask = rng.random((31, 17)) < 0.4
        rle = encode_rle(mask)
        compressed = coco.frPyObjects(rle, *rle["size"])
        assert np.array_equal(coco.decode(compressed).astype(bool), mask)
        assert coco.area(compressed) == mask.sum()


def test_encode_512_is_fast() -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((512, 512), bool)
    mask[100:400, 50:300] = rng.random((300, 250)) < 0.9  # many short runs: the worst realistic case
    encode_rle(mask)
    start = time.perf_counter()
    for _ in range(20):
        encode_rle(mask)
    per_call = (time.perf_counter() - start) / 20
    assert per_call < 0.02, f"{per_call * 1e3:.2f} ms per 512x512 encode"


def test_encode_refuses_non_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        encode_rle(np.zeros((2, 3, 4), bool))


@pytest.mark.parametrize(
    "rle, match",
    [
        ([1, 2], "'size' and 'counts'"),
        ({"size": [2, 2]}, "'size' and 'counts'"),
        ({"size": [2], "counts": [4]}, "'size'"),
        ({"size": [2, -2], "counts": [4]}, "'size'"),
        ({"size": [2, 2.0], "counts": [4]}, "'size'"),
        ({"size": [2, 2], "counts": "4"}, "'counts'"),
        ({"size": [2, 2], "counts": [1, -1, 4]}, "'counts'"),
        ({"size": [2, 2], "counts": [1.5, 2.5]}, "'counts'"),
        ({"size": [2, 2], "counts": [True, 3]}, "'counts'"),
        ({"size": [2, 2], "counts": [1, 2]}, "sum to h\\*w = 4, found 3"),
        ({"size": [2, 2], "counts": [2**70, 4]}, "sum to h\\*w = 4"),
    ],
)
def test_bad_rle_is_refused(rle: object, match: str) -> None:
    with pytest.raises(RequestError, match=match) as info:
        decode_rle(rle)  # type: ignore[arg-type]
    assert info.value.status == 400
