"""SAM's automatic mask generator with each mask tagged by level, and FMA-WSSS's three changes as switches.

segment-anything prompts SAM with a grid of points; each point yields three masks (multimask output), which SAM
orders subpart, part, whole. `LevelledMaskGenerator` keeps that index as the mask's `level` and, following
FMA-WSSS (section 4.2), can
  1. pass whole masks at a lower predicted-IoU threshold: predicted_iou + whole_iou_bonus > pred_iou_thresh
     (FMA: bonus 0.1 with threshold 0.86);
  2. rank whole masks first in the per-crop NMS: score predicted_iou + whole_nms_bonus (FMA: 1.0, more than any
     IoU difference), so an overlapping part or subpart no longer suppresses the whole object;
  3. mark the quasi-superpixels with the whole > part > subpart occupation filter (t_r = 0.3), after NMS and the
     small-region clean-up (see occupation.py).
With bonuses 0 and no filter it returns what SamAutomaticMaskGenerator returns, plus the level of each mask.

The small-region clean-up (min_mask_region_area) is SAM's, with scipy's connected components in place of OpenCV's
(same 8-connectivity), so OpenCV is not needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from wsss_core.masks.occupation import dense_intersections, occupation_filter
from wsss_core.masks.rle import runs_from_coco
from wsss_core.models.compat import ensure_torchvision

ensure_torchvision()
from segment_anything import SamAutomaticMaskGenerator  # noqa: E402
from segment_anything.modeling import Sam  # noqa: E402
from segment_anything.utils.amg import (  # noqa: E402
    MaskData,
    area_from_rle,
    batch_iterator,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    calculate_stability_score,
    coco_encode_rle,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from torchvision.ops.boxes import batched_nms  # noqa: E402

WHOLE = 2  # SAM's third multimask output


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """SAM's helper without OpenCV: fill holes ("holes") or drop islands ("islands") smaller than area_thresh.

    Returns the mask and whether it changed. When every island is small, the largest is kept.
    """
    from scipy import ndimage

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    fill_holes = mode == "holes"
    regions, n_regions = ndimage.label(fill_holes ^ mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)[1:]
    small = sizes < area_thresh
    if not small.any():
        return mask, False
    # Which labels form the result (label 0 is what was not labelled: the mask itself when filling holes).
    chosen = np.concatenate(([fill_holes], small if fill_holes else ~small))
    if not fill_holes and small.all():
        chosen[int(np.argmax(sizes)) + 1] = True
    return chosen[regions], True


def nms_scores(iou_preds: torch.Tensor, levels: torch.Tensor, whole_bonus: float) -> torch.Tensor:
    """Per-crop NMS scores: the predicted IoU, plus `whole_bonus` for whole masks (FMA change 2)."""
    return iou_preds + whole_bonus * (levels == WHOLE).to(iou_preds.dtype)


class LevelledMaskGenerator(SamAutomaticMaskGenerator):
    """SamAutomaticMaskGenerator whose records carry `level` and `kept`, with FMA-WSSS's changes switchable.

    Arguments:
      model: the SAM model (see wsss_core.models.sam).
      whole_iou_bonus: added to a whole mask's predicted IoU for the pred_iou_thresh test (FMA: 0.1; 0: SAM).
      whole_nms_bonus: added to a whole mask's predicted IoU as its per-crop NMS score (FMA: 1.0; 0: SAM).
      occupation_threshold: t_r of the quasi-superpixel filter (FMA: 0.3); None marks every mask kept.
      min_mask_region_area: SAM's small-region clean-up (FMA: 100); 0 skips it.
      **sam_options: the other SamAutomaticMaskGenerator arguments (points_per_side, pred_iou_thresh, ...).
    """

    def __init__(
        self,
        model: Sam,
        *,
        whole_iou_bonus: float = 0.0,
        whole_nms_bonus: float = 0.0,
        occupation_threshold: float | None = None,
        min_mask_region_area: int = 0,
        **sam_options: Any,
    ) -> None:
        # SAM's constructor insists on OpenCV when min_mask_region_area > 0; the clean-up here does not use it.
        super().__init__(model, min_mask_region_area=0, output_mode="coco_rle", **sam_options)
        self.min_mask_region_area = min_mask_region_area
        self.whole_iou_bonus = whole_iou_bonus
        self.whole_nms_bonus = whole_nms_bonus
        self.occupation_threshold = occupation_threshold

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Mask records of an (H, W, 3) uint8 image: SAM's coco_rle records plus `level` (0, 1, 2) and `kept`."""
        data = self._generate_masks(image)
        if self.min_mask_region_area > 0:
            data = self.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        segmentations = [coco_encode_rle(rle) for rle in data["rles"]]
        areas = np.array([area_from_rle(rle) for rle in data["rles"]], dtype=np.int64)
        levels = np.asarray(data["level"]).astype(np.int64)
        kept = self._quasi_superpixels(segmentations, levels, areas, image.shape[:2])
        return [
            {
                "segmentation": segmentation,
                "area": int(areas[i]),
                "bbox": box_xyxy_to_xywh(data["boxes"][i]).tolist(),
                "predicted_iou": float(data["iou_preds"][i]),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": float(data["stability_score"][i]),
                "crop_box": box_xyxy_to_xywh(data["crop_boxes"][i]).tolist(),
                "level": int(levels[i]),
                "kept": bool(kept[i]),
            }
            for i, segmentation in enumerate(segmentations)
        ]

    def _quasi_superpixels(self, segmentations: list[dict], levels: np.ndarray, areas: np.ndarray, size) -> np.ndarray:
        if self.occupation_threshold is None or not segmentations:
            return areas >= 0
        counts = [s["counts"].encode() if isinstance(s["counts"], str) else s["counts"] for s in segmentations]
        dense = runs_from_coco(counts, size).to_dense()
        overlap = dense_intersections(np.ascontiguousarray(dense), device=self.predictor.device)
        return occupation_filter(levels, areas, overlap, self.occupation_threshold)

    def _process_crop(self, image: np.ndarray, crop_box: list[int], crop_layer_idx: int, orig_size) -> MaskData:
        x0, y0, x1, y1 = crop_box
        cropped = image[y0:y1, x0:x1, :]
        cropped_size = cropped.shape[:2]
        self.predictor.set_image(cropped)
        points_for_image = self.point_grids[crop_layer_idx] * np.array(cropped_size)[None, ::-1]
        data = MaskData()
        for (points,) in batch_iterator(self.points_per_batch, points_for_image):
            data.cat(self._process_batch(points, cropped_size, crop_box, orig_size))
        self.predictor.reset_image()

        scores = nms_scores(data["iou_preds"], data["level"], self.whole_nms_bonus)
        keep = batched_nms(data["boxes"].float(), scores, torch.zeros_like(scores), iou_threshold=self.box_nms_thresh)
        data.filter(keep)
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        # (n, 4) even for n = 0: SAM's list comprehension gives shape (0,) there and fails when a crop keeps nothing
        data["crop_boxes"] = torch.tensor([crop_box]).repeat(len(data["rles"]), 1)
        return data

    def _process_batch(self, points: np.ndarray, im_size, crop_box: list[int], orig_size) -> MaskData:
        transformed = self.predictor.transform.apply_coords(points, im_size)
        in_points = torch.as_tensor(transformed, device=self.predictor.device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        masks, iou_preds, _ = self.predictor.predict_torch(
            in_points[:, None, :], in_labels[:, None], multimask_output=True, return_logits=True
        )
        return self.select_masks(masks, iou_preds, points, crop_box, orig_size)

    def select_masks(
        self, logits: torch.Tensor, iou_preds: torch.Tensor, points: np.ndarray, crop_box: list[int], orig_size
    ) -> MaskData:
        """SAM's per-batch filtering of (N, 3, h, w) mask logits, with levels and the whole-mask IoU bonus."""
        orig_h, orig_w = orig_size
        n_points, n_levels = iou_preds.shape
        data = MaskData(
            masks=logits.flatten(0, 1),
            iou_preds=iou_preds.flatten(0, 1),
            points=torch.as_tensor(points.repeat(n_levels, axis=0)),
            level=torch.arange(n_levels, device=iou_preds.device).repeat(n_points),
        )
        if self.pred_iou_thresh > 0.0:
            bonus = self.whole_iou_bonus * (data["level"] == WHOLE).to(data["iou_preds"].dtype)
            data.filter(data["iou_preds"] + bonus > self.pred_iou_thresh)
        threshold = self.predictor.model.mask_threshold
        data["stability_score"] = calculate_stability_score(data["masks"], threshold, self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= self.stability_score_thresh)
        data["masks"] = data["masks"] > threshold
        data["boxes"] = batched_mask_to_box(data["masks"])
        near_edge = is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if near_edge.any():
            data.filter(~near_edge)
        data["masks"] = uncrop_masks(data["masks"], crop_box, orig_h, orig_w)
        data["rles"] = mask_to_rle_pytorch(data["masks"])
        del data["masks"]
        return data

    @staticmethod
    def postprocess_small_regions(mask_data: MaskData, min_area: int, nms_thresh: float) -> MaskData:
        """SAM's clean-up: fill small holes, drop small islands, then NMS preferring masks that needed neither."""
        if len(mask_data["rles"]) == 0:
            return mask_data
        cleaned, untouched = [], []
        for rle in mask_data["rles"]:
            mask, filled = remove_small_regions(rle_to_mask(rle), min_area, "holes")
            mask, dropped = remove_small_regions(mask, min_area, "islands")
            cleaned.append(torch.as_tensor(mask))
            untouched.append(0.0 if filled or dropped else 1.0)
        masks = torch.stack(cleaned)
        boxes = batched_mask_to_box(masks)
        scores = torch.as_tensor(untouched)
        keep = batched_nms(boxes.float(), scores, torch.zeros_like(scores), iou_threshold=nms_thresh)
        for i in keep.tolist():
            if untouched[i] == 0.0:
                mask_data["rles"][i] = mask_to_rle_pytorch(masks[i][None])[0]
                mask_data["boxes"][i] = boxes[i]
        mask_data.filter(keep)
        return mask_data
