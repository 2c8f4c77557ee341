"""``task: {name: full_field}``: whole mammograms at a fixed 5:4 size, the full-field progressive GAN's input.

The seed's preprocessing (methods.md section 5): background removed (labels and markers outside the
breast are zeroed), laterality normalised (every breast is flipped so its chest wall is on the left
edge), the breast's bounding box downscaled by the *largest* factor that still fits the target
(one side matches), and the other side zero-padded (right / bottom, so the chest wall stays on the
edge). Written as 16-bit PNG. Never upscaled unless asked: a film whose breast is smaller than the
target is reported (lenient mode: excluded with the reason; strict mode: stops), because mixing
upscaled and downscaled films would mix physical scales in one training set.

Manifest columns beyond the common ones: ``label`` (the image label), ``view`` and ``laterality``
(as recorded: the *original* side, also after the flip), ``flipped``, ``scale`` (output pixels per
source pixel), ``crop_box`` (the breast box in source coordinates) and ``orientation``
(``chest_wall_left``: what generators trained on these images make).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from breastgan.data.adapters.readers import load_image
from breastgan.data.adapters.records import ImageRecord
from breastgan.data.preprocess import Box, fit_placement, mask_bbox, needs_flip, resize_pad, segment_breast
from breastgan.data.prepare import TASKS, PreflightResult, PrepareConfig, SegmentationConfig, TaskResult, _base_row, _Strict, _write


class FullFieldArgs(_Strict):
    """Options of the ``full_field`` task."""

    size: tuple[int, int] = Field((1280, 1024), description="(H, W) of every output image")
    aspect: tuple[int, int] | None = Field((5, 4), description="required H:W of size (the progressive GAN's 5x4 base); null: any")
    chest_wall: Literal["left", "right"] = Field("left", description="side every breast is flipped to")
    crop_to_breast: bool = Field(True, description="fit the breast's bounding box (not the whole film) into size")
    upscale: bool = Field(False, description="allow enlarging a breast smaller than size (off: such films are reported)")
    segmentation: SegmentationConfig = SegmentationConfig()

    @model_validator(mode="after")
    def _check(self) -> "FullFieldArgs":
        h, w = self.size
        if h < 1 or w < 1:
            raise ValueError(f"size: must be positive, got {self.size}")
        if self.aspect is not None and h * self.aspect[1] != w * self.aspect[0]:
            raise ValueError(f"size: {h}x{w} is not {self.aspect[0]}:{self.aspect[1]} (H:W); e.g. {self.aspect[0] * 64}x{self.aspect[1] * 64}, "
                             "or set aspect: null")
        return self


@TASKS.register("full_field", args=FullFieldArgs, summary="whole mammograms at a fixed 5:4 size: background removed, chest wall left, largest downscale that fits, zero-padded (progressive GAN)")
def full_field_task(record: ImageRecord, pre: PreflightResult, cfg: PrepareConfig, args: FullFieldArgs, out_dir: Path,
                    healthy_sides: list[int]) -> TaskResult:
    res = TaskResult(record.image_id)
    img = load_image(record.source, cfg.reader).pixels
    h, w = img.shape
    seg = args.segmentation
    breast = segment_breast(img, seg.threshold, seg.threshold_scale, seg.opening_px)
    if not breast.any():
        res.problems.append(f"{record.source}: no breast found by segmentation (threshold {seg.threshold}, scale {seg.threshold_scale})")
        return res
    img = np.where(breast, img, 0.0).astype(np.float32)  # film labels and markers outside the breast removed
    box = mask_bbox(breast) if args.crop_to_breast else Box(0, 0, w, h)
    img, breast = img[box.y0 : box.y1, box.x0 : box.x1], breast[box.y0 : box.y1, box.x0 : box.x1]
    flipped = needs_flip(breast, args.chest_wall)
    if flipped:
        img = img[:, ::-1]
    target = tuple(args.size)
    place = fit_placement(img.shape, target, "end")
    if place.scale > 1.0 and not args.upscale:
        res.problems.append(f"{record.source}: the breast ({img.shape[0]}x{img.shape[1]} px) is smaller than size {target[0]}x{target[1]}; "
                            f"it would be upscaled x{place.scale:.2f} (task.args.upscale: false). Choose a smaller size or allow upscaling")
        return res
    out, place = resize_pad(np.ascontiguousarray(img), target, "area", "end")
    row = _base_row(record, pre)
    row.update(item_id=record.image_id, label=record.label, flipped=int(flipped), scale=f"{place.scale:.6f}", crop_box=box.as_text(),
               orientation=f"chest_wall_{args.chest_wall}", file=_write(out_dir, record.image_id, out, cfg.image_format))
    res.rows.append(row)
    return res
