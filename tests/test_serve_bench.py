"""The load benchmarks' "new image" requests are new to the service: each misses the embedding cache, whose key
is the displayed uint8 image, so what they time is an encoding (benchmarks/serve_bench.py, quant_bench.py,
batcher_warmup.py)."""

from __future__ import annotations

from benchmarks.serve_bench import numbered
from service.dicom import read_dicom
from service.segmenter import pixels_digest
from tests.dicomfiles import ct_hu, ct_image


def test_every_numbered_image_displays_differently() -> None:
    image = ct_image(ct_hu(32, 32, seed=3))
    numbers = [*range(450), 39_999]  # past the first pixel's wrap at 200 and the last of the 40,000
    digests = {pixels_digest(read_dicom(numbered(image, i)).display(0)) for i in numbers}
    assert len(digests) == len(numbers)
