"""Transition shim: the old ``images`` module, split into :mod:`.imageinfo`
(formats, safe opening, headers), :mod:`.fsutil` (atomic writes, placing
files, sidecars, locks) and :mod:`.sorting` (the 7.x placement engine).

New code imports from those modules; this re-export goes once no branch
imports ``images`` any more.
"""

from __future__ import annotations

from .fsutil import (
    SIDECAR_EXTENSIONS,
    Placed,
    atomic_write_bytes,
    atomic_write_text,
    place_file,
    same_content,
    sidecars_of,
)
from .imageinfo import (
    COMMON_EXTENSIONS,
    IMAGE_EXTENSIONS,
    ImageError,
    ImageInfo,
    exif_orientation,
    is_image,
    iter_images,
    open_image,
    read_info,
    read_infos,
    verify_image,
)
from .sorting import SortResult, print_sort_report, sort_images, sort_into_folders

__all__ = [
    "COMMON_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "SIDECAR_EXTENSIONS",
    "ImageError",
    "ImageInfo",
    "Placed",
    "SortResult",
    "atomic_write_bytes",
    "atomic_write_text",
    "exif_orientation",
    "is_image",
    "iter_images",
    "open_image",
    "place_file",
    "print_sort_report",
    "read_info",
    "read_infos",
    "same_content",
    "sidecars_of",
    "sort_images",
    "sort_into_folders",
    "verify_image",
]
