"""Faces in ordinary photos: find each one, then crop it the way the training images were framed.

Detectors trained on aligned face crops (the Kaggle set: FFHQ-aligned faces and StyleGAN faces
framed alike) judge a face, not a holiday photo. The detector here is scikit-image's LBP frontal-face
cascade, whose trained file ships inside scikit-image (`pip install -e ".[face]"`): nothing is
downloaded at run time. It finds frontal and near-frontal faces; profiles and heavily occluded
faces are missed, which predictions.csv shows as an image without a face.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from deepfake.data.image_files import ImageFileDataset
from deepfake.data.images import load_rgb
from deepfake.errors import ConfigError
from deepfake.inference.inputs import ImageInputs
from deepfake.inference.predictions import Row


@dataclass(frozen=True)
class FaceBox:
    """A face as the detector framed it, in pixels of the original image (x1, y1 exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int

    def __str__(self) -> str:
        return f"{self.x0} {self.y0} {self.x1} {self.y1}"


class LbpFaceDetector:
    """scikit-image's LBP frontal-face cascade over a grayscale copy of the image.

    ``min_size`` is the smallest face looked for, as a share of the image's shorter side: smaller
    faces hold too few pixels to judge, and a small window is where the cascade's false alarms come
    from. Images are searched at most ``max_side`` pixels wide (boxes are mapped back), which bounds
    the time per photo.
    """

    def __init__(
        self, min_size: float = 0.1, scale_factor: float = 1.2, min_neighbors: int = 4, max_side: int = 640
    ) -> None:
        try:  # from the config: a mistyped value is a string here
            self.min_size, self.scale_factor = float(min_size), float(scale_factor)
            self.min_neighbors, self.max_side = int(min_neighbors), int(max_side)
        except (TypeError, ValueError):
            raise ConfigError(f"predict.face_detector: min_size={min_size!r}, scale_factor={scale_factor!r}, "
                              f"min_neighbors={min_neighbors!r}, max_side={max_side!r} must be numbers") from None  # fmt: skip
        if not 0 < self.min_size <= 1:
            raise ConfigError(f"predict.face_detector.min_size={min_size} must be a share of the image side in (0, 1]")
        if self.scale_factor <= 1 or self.min_neighbors < 1 or self.max_side < 32:
            raise ConfigError("predict.face_detector: scale_factor must be > 1, min_neighbors >= 1, max_side >= 32")
        # Checked here, in the main process: raised in a DataLoader worker it would arrive wrapped
        # in that worker's traceback instead of as one line.
        self._cascade_file = _cascade_file()
        self._cascade = None  # built on first use in each process: the Cython object does not pickle

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cascade": None}

    def _get_cascade(self):
        if self._cascade is None:
            from skimage.feature import Cascade

            self._cascade = Cascade(self._cascade_file)
        return self._cascade

    def __call__(self, image: Image.Image) -> list[FaceBox]:
        """The faces in ``image``, left to right."""
        scale = min(1.0, self.max_side / max(image.size))
        small = image if scale == 1.0 else image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR
        )  # fmt: skip
        gray = np.asarray(small.convert("L"), dtype=np.float32) / 255.0
        side = min(gray.shape)
        window = max(24, round(self.min_size * side))  # the cascade's own window is 24 px
        if window > side:
            return []
        found = self._get_cascade().detect_multi_scale(
            img=gray, scale_factor=self.scale_factor, step_ratio=1, min_size=(window, window),
            max_size=(side, side), min_neighbor_number=self.min_neighbors,
        )  # fmt: skip
        boxes = [
            FaceBox(round(f["c"] / scale), round(f["r"] / scale),
                    round((f["c"] + f["width"]) / scale), round((f["r"] + f["height"]) / scale))
            for f in found
        ]  # fmt: skip
        return sorted(boxes, key=lambda box: (box.x0, box.y0))


def _cascade_file() -> str:
    try:
        from skimage import data
    except ImportError:
        raise ConfigError('predict.face_crop=true needs scikit-image; run: pip install -e ".[face]"') from None
    return data.lbp_frontal_face_cascade_filename()


def face_region(box: FaceBox, margin: float, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The square crop around ``box``: its longer side grown by ``margin`` on each side, centred on
    the face, shifted inside the image when it fits (PIL pads black where it does not)."""
    width, height = image_size
    side = round(max(box.x1 - box.x0, box.y1 - box.y0) * (1 + 2 * margin))
    centre_x, centre_y = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    left, top = round(centre_x - side / 2), round(centre_y - side / 2)
    if side <= width:
        left = min(max(left, 0), width - side)
    if side <= height:
        top = min(max(top, 0), height - side)
    return left, top, left + side, top + side


class FaceSearch(Dataset):
    """Item ``i``: the faces of image ``i`` with their crops, or why it is damaged; DataLoader workers
    run it (``batch_size=None``), so photos are decoded and searched in parallel."""

    def __init__(self, paths: Sequence[str], detector, margin: float, fallback_size: int = 256) -> None:
        if margin < 0:
            raise ConfigError(f"predict.face_margin={margin} must be >= 0 (a share of the face box on each side)")
        self.paths, self.detector, self.margin, self.fallback_size = list(paths), detector, margin, fallback_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        image, reason = load_rgb(self.paths[index], self.fallback_size)
        boxes = [] if reason is not None else self.detector(image)
        regions = [face_region(box, self.margin, image.size) for box in boxes]
        return {"index": index, "boxes": boxes, "regions": regions, "damaged": reason}


class FaceCropDataset(ImageFileDataset):
    """One item per face: the image at ``paths[i]`` cropped to ``regions[i]``, then transformed."""

    def __init__(self, paths, regions: Sequence[tuple[int, int, int, int]], transform=None, targets=None, *,
                 fallback_size: int = 256) -> None:  # fmt: skip
        super().__init__(paths, transform, targets, fallback_size=fallback_size)
        self.regions = [tuple(region) for region in regions]

    def load(self, index: int) -> tuple[Image.Image, str | None]:
        image, reason = super().load(index)
        return (image if reason is not None else image.crop(self.regions[index])), reason


def plan_face_rows(found: Iterable[dict], inputs: ImageInputs, transform, fallback_size: int):
    """Rows of predictions.csv (one per face; one per image without a face or damaged) and the
    dataset of face crops that the scoring loop runs over."""
    rows, paths, regions, targets = [], [], [], []
    for result in found:
        index = result["index"]
        path, target = inputs.paths[index], inputs.target(index)
        if result["damaged"] or not result["boxes"]:
            rows.append(Row(path, item=None, damaged=result["damaged"], target=target))
            continue
        for number, (box, region) in enumerate(zip(result["boxes"], result["regions"])):
            rows.append(Row(path, item=len(paths), face=number, box=str(box), target=target))
            paths.append(path)
            regions.append(region)
            targets.append(target)
    crops = FaceCropDataset(
        paths, regions, transform, np.asarray(targets, dtype=np.float32), fallback_size=fallback_size
    )
    return rows, crops
