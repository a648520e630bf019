"""Calibration data: the field's file formats -> cases -> 2-D slices with masks and box prompts, split by case.

Three steps, as nnU-Net's conversion pipeline is laid out, one module each:

1. **Loaders** (`search.data.formats`: `LOADERS`, one small class per file format; `get_loader(name)` fails listing
   the valid names) list a dataset's case ids cheaply and read one case at a time into `Volume`s: raw intensities
   and an integer label map. The array layout the loaders share is described there.
2. **Slicing** (`search.data.slicing`: `case_slices`) cuts a volume along an axis, applies the intensity preset of
   `service.imaging` to the whole volume (so percentile presets use per-volume statistics, as MedSAM's preparation
   does), keeps the slices where the selected label(s) have foreground after small connected components are
   dropped, and derives the box prompts from the mask.
3. **Splitting** (`search.data.split`: `split_cases`) by case, seeded; `load_task` returns a `LoadedTask`: the
   calibration and test `Task`s with their slices in one seeded order, and the split record a caller writes down
   with its results.

`search.data.spec` holds `DataSpec`, the validated description of a task. This package re-exports the public names.
"""

from __future__ import annotations

from search.data.formats import (
    LOADERS,
    DicomSegLoader,
    Loader,
    NiftiLoader,
    NnUNetLoader,
    NpzLoader,
    PngLoader,
    Volume,
    get_loader,
)
from search.data.slicing import case_slices, jitter_boxes, mask_boxes
from search.data.spec import DataSpec, chosen_presets, open_loader, parse_spec
from search.data.split import LoadedTask, load_task, split_cases

__all__ = [
    "LOADERS",
    "DataSpec",
    "DicomSegLoader",
    "LoadedTask",
    "Loader",
    "NiftiLoader",
    "NnUNetLoader",
    "NpzLoader",
    "PngLoader",
    "Volume",
    "case_slices",
    "chosen_presets",
    "get_loader",
    "jitter_boxes",
    "load_task",
    "mask_boxes",
    "open_loader",
    "parse_spec",
    "split_cases",
]
