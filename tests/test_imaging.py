"""service/imaging: checked against segment_anything, torchvision/Pillow and MedSAM's formulas as references.

The references (torch, PIL, segment_anything) are imported here only; the module under test must not need them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from segment_anything import SamPredictor
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.transforms.functional import resize as tv_resize
from torchvision.transforms.functional import to_pil_image

from search.architectures import build_sam
from service import imaging
from service.imaging import (
    GEOMETRIES,
    NORMALIZATIONS,
    PRESETS,
    ImagingError,
    MinMax,
    Percentile,
    PointLabel,
    SparsePrompt,
    Window,
    check_boxes,
    check_points,
    encoder_input,
    get_geometry,
    get_normalization,
    get_preset,
    normalize,
    pad_normalized,
    resize,
    to_uint8,
)

SAM = GEOMETRIES["sam"]
MEDSAM = GEOMETRIES["medsam"]
ROOT = Path(__file__).resolve().parents[1]


def random_image(rng: np.random.Generator, h: int, w: int, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels else (h, w)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def gradient_image(h: int, w: int) -> np.ndarray:
    """A smooth RGB image (the case where rounding ties and off-by-one weights show up as banding)."""
    y, x = np.mgrid[0:h, 0:w]
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 127.5 + 127.5 * np.sin(x / 7.0 + y / 11.0)
    return np.rint(np.stack([r, g, b], axis=-1)).astype(np.uint8)


def pil_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    return np.array(Image.fromarray(image).resize((out_w, out_h), Image.BILINEAR))


@pytest.fixture(scope="module")
def tiny_sam():
    torch.manual_seed(0)
    return build_sam("tiny")


# ---------------------------------------------------------------------------------------------------------------
# The module's own contract.
# ---------------------------------------------------------------------------------------------------------------


def test_importing_imaging_loads_neither_torch_nor_pillow() -> None:
    code = "import sys, service.imaging; print(sorted(m for m in ('torch', 'PIL', 'torchvision') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------------
# Pillow-exact resize.
# ---------------------------------------------------------------------------------------------------------------

# (in_h, out_h) pairs: both shrink and grow, a kept height, and strong shrinks that make Pillow >= 13 run the
# vertical pass first (in_h - out_h > 2 * (in_w - out_w)).
HEIGHTS = [(1, 1), (7, 3), (3, 7), (5, 5), (13, 2), (24, 20), (20, 9), (2, 19)]


@pytest.mark.parametrize(("in_h", "out_h"), HEIGHTS)
def test_resize_is_bit_identical_to_pillow_bilinear_on_a_grid_of_sizes(in_h: int, out_h: int) -> None:
    rng = np.random.default_rng(in_h * 100 + out_h)
    for in_w in range(1, 21):
        for out_w in range(1, 21):
            channels = 3 if (in_w + out_w) % 2 else 0  # RGB and single-band ("L") images
            image = random_image(rng, in_h, in_w, channels)
            np.testing.assert_array_equal(
                resize(image, (out_h, out_w)), pil_bilinear(image, out_h, out_w), err_msg=f"{image.shape}->{out_w}"
            )


@pytest.mark.parametrize(
    ("in_shape", "out_shape"),
    [
        ((24, 2), (20, 1)),  # height shrinks much more than width: vertical pass first
        ((2000, 300), (1024, 154)),  # a tall image going into SAM
        ((1024, 1024), (999, 1000)),  # nearly equal shrink: horizontal first
        ((300, 2000), (154, 1024)),
        ((2048, 2048), (512, 512)),  # 4x antialiased shrink (9-tap windows)
        ((61, 47), (1024, 1024)),  # strong, non-uniform upscale
    ],
)
def test_resize_matches_pillow_on_large_and_order_sensitive_shapes(in_shape, out_shape) -> None:
    rng = np.random.default_rng(sum(in_shape) + sum(out_shape))
    for image in (random_image(rng, *in_shape), gradient_image(*in_shape)):
        np.testing.assert_array_equal(resize(image, out_shape), pil_bilinear(image, *out_shape))


# Original (h, w) shapes for the SAM geometry: square, portrait, landscape, odd, extreme, up- and downscaled.
SAM_SHAPES = [
    (512, 512),
    (1024, 1024),
    (333, 517),
    (517, 333),
    (37, 1000),
    (1000, 37),
    (5, 1023),
    (64, 48),
    (1537, 911),
]


@pytest.mark.parametrize("shape", SAM_SHAPES, ids=[f"{h}x{w}" for h, w in SAM_SHAPES])
def test_sam_prepare_is_bit_identical_to_resize_longest_side(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    for size in (1024, 128):
        transform = ResizeLongestSide(size)
        gray = random_image(rng, *shape, channels=0)
        for image in (random_image(rng, *shape), gradient_image(*shape), gray):
            reference_input = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
            expected = transform.apply_image(reference_input)
            model_input, frame = SAM.prepare(image, size)
            h, w = frame.resized
            assert model_input.shape == (size, size, 3) and model_input.dtype == np.uint8
            assert frame.original == shape
            assert frame.resized == transform.get_preprocess_shape(*shape, size) == expected.shape[:2]
            np.testing.assert_array_equal(model_input[:h, :w], expected)
            assert not model_input[h:].any() and not model_input[:, w:].any()


@pytest.mark.parametrize("shape", [(512, 512), (333, 517), (1000, 37), (64, 48)])
def test_medsam_prepare_is_bit_identical_to_torchvision_resize(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] + shape[1])
    for size in (1024, 128):
        for image in (random_image(rng, *shape), gradient_image(*shape)):
            model_input, frame = MEDSAM.prepare(image, size)
            assert frame.original == shape and frame.resized == (size, size)
            np.testing.assert_array_equal(model_input, np.array(tv_resize(to_pil_image(image), [size, size])))


# ---------------------------------------------------------------------------------------------------------------
# Boxes.
# ---------------------------------------------------------------------------------------------------------------


def random_boxes(rng: np.random.Generator, h: int, w: int, n: int = 16) -> np.ndarray:
    x = np.sort(rng.uniform(0, w, (n, 2)), axis=1)
    y = np.sort(rng.uniform(0, h, (n, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1] + 1e-3, y[:, 1] + 1e-3], axis=1)
    boxes[0] = [0, 0, w, h]  # the whole image is a valid box
    return np.minimum(boxes, [w, h, w, h])


@pytest.mark.parametrize("shape", SAM_SHAPES, ids=[f"{h}x{w}" for h, w in SAM_SHAPES])
def test_sam_boxes_are_bit_identical_to_apply_boxes(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0])
    boxes = random_boxes(rng, *shape)
    integer_boxes = np.concatenate([np.floor(boxes[:, :2]), np.ceil(boxes[:, 2:])], axis=1).astype(np.int64)
    for size in (1024, 128):
        frame = SAM.frame(*shape, size)
        for b in (boxes, integer_boxes):
            np.testing.assert_array_equal(SAM.box_to_model(b, frame), ResizeLongestSide(size).apply_boxes(b, shape))


@pytest.mark.parametrize("shape", [(512, 512), (333, 517), (1000, 37)])
def test_medsam_boxes_match_medsams_formula(shape: tuple[int, int]) -> None:
    h, w = shape
    boxes = random_boxes(np.random.default_rng(h), h, w)
    expected = boxes / np.array([w, h, w, h]) * 1024  # MedSAM_Inference.py
    np.testing.assert_allclose(MEDSAM.box_to_model(boxes, MEDSAM.frame(h, w, 1024)), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("shape", SAM_SHAPES, ids=[f"{h}x{w}" for h, w in SAM_SHAPES])
def test_boxes_round_trip_through_the_model_frame(geometry: str, shape: tuple[int, int]) -> None:
    g = get_geometry(geometry)
    boxes = random_boxes(np.random.default_rng(shape[1]), *shape)
    frame = g.frame(*shape, 1024)
    back = g.box_to_image(g.box_to_model(boxes, frame), frame)
    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-9)


@pytest.mark.parametrize("shape", SAM_SHAPES, ids=[f"{h}x{w}" for h, w in SAM_SHAPES])
def test_sam_points_are_bit_identical_to_apply_coords(shape: tuple[int, int]) -> None:
    h, w = shape
    points = np.random.default_rng(w).uniform(0, 1, (7, 2)) * [w, h]
    for size in (1024, 128):
        frame = SAM.frame(*shape, size)
        for p in (points, np.floor(points).astype(np.int64)):
            np.testing.assert_array_equal(SAM.points_to_model(p, frame), ResizeLongestSide(size).apply_coords(p, shape))


def test_a_sparse_prompt_is_sams_points_and_labels_in_sampredictors_order() -> None:
    """Clicks (foreground, then background), then the box's corners, or one padding point without a box: what
    `SamPredictor` hands its prompt encoder (`pad=boxes is None`)."""
    frame = SAM.frame(60, 90, 128)
    fg, bg, box = [[10.0, 20.0], [30.0, 5.0]], [[80.0, 50.0]], [5.0, 6.0, 70.0, 59.0]
    coords, labels = SparsePrompt.checked(box, fg, bg, 60, 90).to_model(SAM, frame)
    assert coords.dtype == labels.dtype == np.float32
    expected = ResizeLongestSide(128).apply_coords(np.array([*fg, *bg, box[:2], box[2:]]), (60, 90))
    np.testing.assert_array_equal(coords, expected.astype(np.float32))
    assert labels.tolist() == [1, 1, 0, 2, 3]
    coords, labels = SparsePrompt.checked(None, fg[:1], [], 60, 90).to_model(SAM, frame)
    assert labels.tolist() == [PointLabel.FOREGROUND, PointLabel.PADDING] and coords.shape == (2, 2)
    coords, labels = SparsePrompt.checked(box, [], [], 60, 90).to_model(MEDSAM, MEDSAM.frame(60, 90, 128))
    np.testing.assert_allclose(coords.reshape(4), MEDSAM.box_to_model(np.array([box]), MEDSAM.frame(60, 90, 128))[0])
    assert labels.tolist() == [2, 3]


def test_check_points_accepts_the_closed_image_and_no_points() -> None:
    points = check_points(np.array([[0, 0], [12, 16]], np.int32), 16, 12)
    assert points.dtype == np.float64 and points.shape == (2, 2)
    assert check_points([], 5, 5).shape == (0, 2)


def test_check_boxes_accepts_valid_boxes_and_returns_float64() -> None:
    boxes = check_boxes(np.array([[0, 0, 10, 20], [2, 3, 4, 5]], np.int32), 20, 10)
    assert boxes.dtype == np.float64 and boxes.shape == (2, 4)
    assert check_boxes(np.zeros((0, 4)), 5, 5).shape == (0, 4)


# ---------------------------------------------------------------------------------------------------------------
# The whole SAM path against segment_anything's own predictor.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(100, 60), (40, 200), (300, 300), (17, 23)])
def test_encoder_input_is_bit_identical_to_what_sam_predictor_feeds_the_encoder(tiny_sam, shape) -> None:
    captured: list[torch.Tensor] = []
    hook = tiny_sam.image_encoder.register_forward_pre_hook(lambda module, args: captured.append(args[0].clone()))
    try:
        rng = np.random.default_rng(shape[0])
        image = random_image(rng, *shape)
        predictor = SamPredictor(tiny_sam)
        predictor.set_image(image)
    finally:
        hook.remove()
    model_input, frame = SAM.prepare(image, tiny_sam.image_encoder.img_size)
    assert (frame.original, frame.resized) == (predictor.original_size, predictor.input_size)
    ours = encoder_input(model_input, frame, "sam")
    assert ours.dtype == np.float32 and ours.shape == (3, 128, 128)
    np.testing.assert_array_equal(ours, captured[0][0].numpy())


@pytest.mark.parametrize("shape", [(100, 60), (40, 200), (300, 300), (17, 23)])
def test_sam_masks_match_postprocess_masks(tiny_sam, shape) -> None:
    torch.manual_seed(shape[0])
    frame = SAM.frame(*shape, 128)
    low_res = 4 * torch.randn(5, 1, 64, 64)
    expected32 = tiny_sam.postprocess_masks(low_res, frame.resized, frame.original)[:, 0].numpy()
    expected64 = tiny_sam.double().postprocess_masks(low_res.double(), frame.resized, frame.original)[:, 0].numpy()
    tiny_sam.float()
    scores = SAM.mask_scores(low_res[:, 0].numpy(), frame, 128)
    assert scores.shape == (5, *shape) and scores.dtype == np.float32
    # torch float32 carries ~1e-5 of source-index rounding at this magnitude; we are closer to exact (float64).
    np.testing.assert_allclose(scores, expected64, rtol=0, atol=5e-6)
    np.testing.assert_allclose(scores, expected32, rtol=0, atol=1e-4)
    masks = SAM.mask_to_image(low_res[:, 0].numpy(), frame, 128)
    assert masks.dtype == bool and masks.shape == (5, *shape)
    assert (masks == (expected32 > 0)).mean() >= 0.999


def test_sam_masks_match_sam_predictor_end_to_end(tiny_sam) -> None:
    image = random_image(np.random.default_rng(3), 90, 140)
    predictor = SamPredictor(tiny_sam)
    predictor.set_image(image)
    box = np.array([10, 20, 100, 70])
    logits, _, low_res = predictor.predict(box=box, multimask_output=True, return_logits=True)
    _, frame = SAM.prepare(image, 128)
    np.testing.assert_allclose(SAM.box_to_model(box[None], frame), predictor.transform.apply_boxes(box, (90, 140)))
    scale = max(1.0, float(np.abs(logits).max()))
    np.testing.assert_allclose(SAM.mask_scores(low_res, frame, 128), logits, rtol=0, atol=1e-5 * scale)
    assert (SAM.mask_to_image(low_res, frame, 128) == (logits > 0)).mean() >= 0.999


# ---------------------------------------------------------------------------------------------------------------
# MedSAM masks and normalisation.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(512, 512), (100, 60), (17, 300), (256, 256)])
def test_medsam_masks_match_medsam_inference(shape: tuple[int, int]) -> None:
    torch.manual_seed(shape[1])
    low_res = 4 * torch.randn(3, 1, 256, 256)
    # MedSAM_Inference.py: sigmoid, bilinear (align_corners=False) to the original shape, > 0.5.
    reference = F.interpolate(torch.sigmoid(low_res.double()), size=shape, mode="bilinear", align_corners=False)
    reference = reference[:, 0].numpy()
    frame = MEDSAM.frame(*shape, 1024)
    scores = MEDSAM.mask_scores(low_res[:, 0].numpy(), frame, 1024)
    np.testing.assert_allclose(scores, reference, rtol=0, atol=1e-6)
    masks = MEDSAM.mask_to_image(low_res[:, 0].numpy(), frame, 1024)
    assert masks.shape == (3, *shape) and (masks == (reference > 0.5)).mean() >= 0.999


def test_medsam_mask_scores_survive_extreme_logits() -> None:
    frame = MEDSAM.frame(8, 8, 1024)
    logits = np.full((1, 4, 4), -1e30, np.float32)
    logits[0, :2] = 1e30
    with np.errstate(all="raise"):
        scores = MEDSAM.mask_scores(logits, frame, 1024)
    assert np.isfinite(scores).all() and scores.min() == 0.0 and scores.max() == 1.0


def test_medsam_normalization_is_min_max_over_the_image() -> None:
    image = random_image(np.random.default_rng(0), 40, 30)
    image[0, 0] = [20, 30, 40]  # min and max come from all channels together
    values = image.astype(np.float64)
    expected = ((values - values.min()) / np.clip(values.max() - values.min(), 1e-8, None)).transpose(2, 0, 1)
    out = normalize(image, "medsam")
    assert out.dtype == np.float32 and out.shape == (3, 40, 30)
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    assert not normalize(np.full((4, 4, 3), 77, np.uint8), "medsam").any()  # constant image: zeros, not NaN


def test_sam_normalization_pads_with_zeros_after_normalising() -> None:
    image = np.zeros((50, 20), np.uint8)  # black: normalises to -mean/std, padding stays 0
    model_input, frame = SAM.prepare(image, 64)
    out = encoder_input(model_input, frame, get_normalization("sam"))
    black = -np.asarray(imaging.PIXEL_MEAN, np.float32) / np.asarray(imaging.PIXEL_STD, np.float32)
    h, w = frame.resized
    np.testing.assert_allclose(out[:, :h, :w], np.broadcast_to(black[:, None, None], (3, h, w)), rtol=1e-6)
    assert not out[:, h:].any() and not out[:, :, w:].any()
    np.testing.assert_array_equal(pad_normalized(normalize(model_input[:h, :w], "sam"), 64), out)


def test_medsam_geometry_with_medsam_normalization_has_no_padding() -> None:
    image = random_image(np.random.default_rng(1), 30, 70)
    model_input, frame = MEDSAM.prepare(image, 64)
    np.testing.assert_array_equal(encoder_input(model_input, frame, "medsam"), normalize(model_input, "medsam"))


# ---------------------------------------------------------------------------------------------------------------
# Intensity presets, against the formulas written out independently.
# ---------------------------------------------------------------------------------------------------------------


def window_reference(value: float, level: float, width: float) -> int:
    low, high = level - width / 2, level + width / 2
    return round((min(max(value, low), high) - low) / width * 255)  # Python's round: half to even


@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if isinstance(p, Window)])
def test_ct_windows_match_the_formula(name: str) -> None:
    preset = get_preset(name)
    rng = np.random.default_rng(len(name))
    for dtype in (np.int16, np.int32, np.float32, np.float64):
        hu = rng.uniform(-1500, 3000, (23, 31)).astype(dtype)
        expected = np.array([[window_reference(float(v), preset.level, preset.width) for v in row] for row in hu])
        out = to_uint8(hu, name)
        assert out.dtype == np.uint8 and out.shape == hu.shape
        np.testing.assert_array_equal(out, expected)


def test_ct_abdomen_anchor_values() -> None:
    hu = np.array([[-1000, -160, 40, 240, 3000, 41]], np.int16)
    # 40 HU is the window centre: 127.5 rounds half to even -> 128; 41 HU -> 128.1375 -> 128.
    np.testing.assert_array_equal(to_uint8(hu, "ct_abdomen"), [[0, 0, 128, 255, 255, 128]])


def mr_reference(values: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    flat = values.astype(np.float64).ravel()
    nonzero = [v for v in flat if v != 0]
    lo, hi = np.percentile(nonzero, low), np.percentile(nonzero, high)
    clipped = [min(max(v, lo), hi) for v in flat]
    c_min, c_max = min(clipped), max(clipped)
    out = [0 if v == 0 else round((c - c_min) / (c_max - c_min) * 255) for v, c in zip(flat, clipped, strict=True)]
    return np.array(out, np.uint8).reshape(values.shape)


def test_mr_percentiles_ignore_zero_voxels_and_keep_them_zero() -> None:
    rng = np.random.default_rng(7)
    mr = rng.gamma(2.0, 300.0, (40, 50)).astype(np.float32)
    mr[:, :12] = 0  # background outside the field of view
    mr[5, 20] = 1e5  # an outlier the 99.5th percentile clips
    out = to_uint8(mr, "mr")
    np.testing.assert_array_equal(out, mr_reference(mr))
    assert not out[:, :12].any() and out.max() == 255
    # Zeros are excluded from the statistics: adding background does not change the foreground's grey levels.
    more_background = np.concatenate([mr, np.zeros((40, 200), np.float32)], axis=1)
    np.testing.assert_array_equal(to_uint8(more_background, "mr")[:, :50], out)


def test_mr_statistics_are_taken_over_a_whole_volume() -> None:
    rng = np.random.default_rng(8)
    volume = rng.gamma(2.0, 300.0, (3, 20, 20)) * np.array([1.0, 2.0, 4.0])[:, None, None]
    out = to_uint8(volume.astype(np.uint16), "mr")
    np.testing.assert_array_equal(out, mr_reference(volume.astype(np.uint16)))
    assert not np.array_equal(out[0], to_uint8(volume[0].astype(np.uint16), "mr"))


def test_minmax_matches_the_formula() -> None:
    image = np.random.default_rng(9).normal(100, 40, (16, 16))
    expected = np.array([[round((v - image.min()) / (image.max() - image.min()) * 255) for v in r] for r in image])
    np.testing.assert_array_equal(to_uint8(image, MinMax()), expected)


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("value", [0, 7, -3000])
def test_constant_images_give_no_nan(name: str, value: int) -> None:
    out = to_uint8(np.full((8, 9), value, np.int32), name)
    assert out.dtype == np.uint8 and out.shape == (8, 9)
    if not isinstance(get_preset(name), Window):  # min-max and percentiles have no range: zeros
        assert not out.any()
    else:
        assert len(np.unique(out)) == 1


def test_custom_percentiles_are_honoured() -> None:
    image = np.arange(1, 101, dtype=np.float64).reshape(10, 10)
    out = to_uint8(image, Percentile(low=10, high=90))
    np.testing.assert_array_equal(out, mr_reference(image, 10, 90))
    assert (out[0, :10] == 0).all() and (out[9, 1:] == 255).all()


# ---------------------------------------------------------------------------------------------------------------
# Errors: one sentence, one line, naming what was expected and found.
# ---------------------------------------------------------------------------------------------------------------

GOOD = np.zeros((16, 12), np.uint8)
FRAME = SAM.frame(16, 12, 64)

ERRORS = {
    "unknown preset": (lambda: to_uint8(GOOD, "ct_liver"), r"unknown intensity preset 'ct_liver': expected one of"),
    "unknown geometry": (lambda: get_geometry("vit_b"), r"unknown geometry 'vit_b': expected one of sam, medsam"),
    "unknown normalization": (lambda: normalize(np.zeros((2, 2, 3), np.uint8), "imagenet"), r"one of sam, medsam"),
    "4-D intensities": (lambda: to_uint8(np.zeros((2, 2, 2, 2)), "mr"), r"HxW .* found shape \(2, 2, 2, 2\)"),
    "complex intensities": (lambda: to_uint8(np.zeros((2, 2), complex), "mr"), r"real intensities"),
    "boolean intensities": (lambda: to_uint8(np.zeros((2, 2), bool), "mr"), r"real numbers.*dtype bool"),
    "NaN intensities": (lambda: to_uint8(np.array([[1.0, np.nan]]), "mr"), r"finite intensities"),
    "bad window": (lambda: Window(level=40, width=0), r"positive width"),
    "bad percentiles": (lambda: Percentile(low=99, high=1), r"0 <= low < high <= 100"),
    "CHW image": (lambda: SAM.prepare(np.zeros((3, 16, 16), np.uint8), 64), r"HxWx3 uint8 image, found shape \(3, 16"),
    "float image": (lambda: MEDSAM.prepare(np.zeros((16, 16)), 64), r"uint8 image, found .*dtype float64"),
    "RGBA image": (lambda: SAM.prepare(np.zeros((4, 4, 4), np.uint8), 64), r"found shape \(4, 4, 4\)"),
    "empty image": (lambda: SAM.prepare(np.zeros((0, 4), np.uint8), 64), r"non-empty"),
    "zero size": (lambda: SAM.prepare(GOOD, 0), r"positive integer model input size, found 0"),
    "needle image": (lambda: SAM.frame(1, 5000, 1024), r"shorter side survives .* \(1, 5000\)"),
    "boxes 1-D": (lambda: check_boxes(np.array([1, 2, 3, 4]), 16, 12), r"Nx4 .* found shape \(4,\)"),
    "boxes Nx2": (lambda: SAM.box_to_model(np.zeros((3, 2)), FRAME), r"Nx4 .* found shape \(3, 2\)"),
    "NaN box": (lambda: check_boxes([[0, 0, 4, 4], [0, np.nan, 4, 4]], 16, 12), r"box 1 has NaN"),
    "flat box": (lambda: check_boxes([[5, 0, 5, 4]], 16, 12), r"box 0 has zero or negative width"),
    "inverted box": (lambda: check_boxes([[0, 0, 4, 4], [0, 9, 4, 3]], 16, 12), r"box 1 .* negative height"),
    "box outside": (lambda: check_boxes([[0, 0, 4, 4]] * 2 + [[0, 0, 13, 4]], 16, 12), r"box 2 reaches outside .*12"),
    "negative box": (lambda: SAM.box_to_model([[-1, 0, 4, 4]], FRAME), r"box 0 reaches outside"),
    "points Nx3": (lambda: check_points(np.zeros((3, 3)), 16, 12), r"Px2 \(x, y\) .* found shape \(3, 3\)"),
    "NaN point": (lambda: check_points([[1, 1], [np.inf, 2]], 16, 12), r"point 1 has NaN or infinite"),
    "point outside": (lambda: SAM.points_to_model([[12.5, 3]], FRAME), r"point 0 lies outside .* 0 <= x <= 12"),
    "click outside": (
        lambda: SparsePrompt.checked(None, [[1, 1]], [[0, 1], [0, 17]], 16, 12, "prompt 3"),
        r"^prompt 3's background click 1 lies outside the image of shape \(16, 12\); expected 0 <= x <= 12 and",
    ),
    "named box": (lambda: SparsePrompt.checked([4, 0, 2, 4], [], [], 16, 12, "prompt 2"), r"^prompt 2's box has zero"),
    "1-D logits": (lambda: SAM.mask_to_image(np.zeros(16, np.float32), FRAME, 64), r"\(N, h, w\) .* shape \(16,\)"),
    "frame of another size": (lambda: SAM.mask_to_image(np.zeros((1, 8, 8), np.float32), FRAME, 1024), r"size 1024"),
    "medsam frame for sam": (
        lambda: SAM.mask_scores(np.zeros((1, 8, 8), np.float32), MEDSAM.frame(16, 12, 64), 64),
        r"sam frame",
    ),
    "zero-height shape": (lambda: MEDSAM.frame(0, 12, 64), r"two positive integers, found \(0, 12\)"),
    "integer logits": (lambda: MEDSAM.mask_to_image(np.zeros((1, 4, 4), int), FRAME, 64), r"float dtype"),
    "normalize CHW": (lambda: normalize(np.zeros((3, 8, 8), np.uint8), "sam"), r"HxWx3 uint8 .* \(3, 8, 8\)"),
    "pad too big": (lambda: pad_normalized(np.zeros((3, 70, 8), np.float32), 64), r"H, W <= 64"),
    "resize float": (lambda: resize(np.zeros((4, 4)), (2, 2)), r"uint8 image to resize"),
    "resize to 0": (lambda: resize(GOOD, (0, 3)), r"at least 1x1 pixels, found 0x3"),
    "non-square input": (lambda: encoder_input(np.zeros((64, 32, 3), np.uint8), FRAME, "sam"), r"square"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_naming_the_problem(case: str) -> None:
    call, pattern = ERRORS[case]
    with pytest.raises(ImagingError, match=pattern) as info:
        call()
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message and message[0].islower() and not message.endswith(".")


def test_registries_list_their_names() -> None:
    assert {"ct_abdomen", "ct_brain", "ct_lung", "ct_bone", "mr", "minmax"} <= set(PRESETS)
    assert set(GEOMETRIES) == {"sam", "medsam"} and set(NORMALIZATIONS) == {"sam", "medsam"}
    assert imaging.NORMALIZATION_NAMES == tuple(NORMALIZATIONS)  # the vocabulary configs and the CLI validate with
    assert (get_preset("ct_lung").level, get_preset("ct_lung").width) == (-600, 1500)
    assert (get_preset("ct_bone").level, get_preset("ct_bone").width) == (400, 1800)
