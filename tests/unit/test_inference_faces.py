"""Faces in ordinary photos: scikit-image's cascade on a real photograph, and the crop around a face."""

import numpy as np
from PIL import Image
from skimage import data as skimage_data  # the face extra; its photographs ship inside the wheel

from deepfake.inference import ImageInputs
from deepfake.inference.faces import FaceBox, FaceCropDataset, FaceSearch, LbpFaceDetector, face_region, plan_face_rows

# The astronaut's face in scikit-image's photograph (Eileen Collins, NASA), by eye: x 180-270, y 70-165.
FACE_CENTRE = (225, 118)


def test_finds_the_face_in_a_real_photograph_and_nothing_in_a_face_free_one(tmp_path):
    detector = LbpFaceDetector()
    photo = Image.fromarray(skimage_data.astronaut())

    (box,) = detector(photo)

    centre = ((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)
    assert abs(centre[0] - FACE_CENTRE[0]) < 20 and abs(centre[1] - FACE_CENTRE[1]) < 20
    assert 70 < box.x1 - box.x0 < 140  # a face, not the whole photo nor an eye
    assert detector(Image.fromarray(skimage_data.coffee())) == []


def test_large_photos_are_searched_downscaled_and_boxes_mapped_back():
    photo = Image.fromarray(skimage_data.astronaut())
    big = photo.resize((1536, 1536), Image.Resampling.BICUBIC)  # searched at 640 px

    (small_box,), (big_box,) = LbpFaceDetector()(photo), LbpFaceDetector(max_side=640)(big)

    assert np.allclose([big_box.x0, big_box.y0, big_box.x1, big_box.y1],
                       [3 * v for v in (small_box.x0, small_box.y0, small_box.x1, small_box.y1)], atol=40)  # fmt: skip


def test_face_region_is_a_square_grown_by_the_margin_and_kept_inside_when_it_fits():
    box = FaceBox(100, 50, 140, 100)  # 40 x 50
    assert face_region(box, 0.5, (400, 400)) == (70, 25, 170, 125)  # side 2 x 50, centred on (120, 75)
    assert face_region(box, 0.0, (400, 400)) == (95, 50, 145, 100)
    assert face_region(FaceBox(0, 0, 40, 40), 0.5, (400, 400)) == (0, 0, 80, 80)  # shifted inside
    assert face_region(FaceBox(0, 0, 40, 40), 0.5, (60, 60)) == (-20, -20, 60, 60)  # too big: padded


def test_rows_per_face_and_crops_of_the_framed_region(tmp_path):
    photo_path, plain_path, broken_path = tmp_path / "astro.png", tmp_path / "coffee.png", tmp_path / "broken.jpg"
    Image.fromarray(skimage_data.astronaut()).save(photo_path)
    Image.fromarray(skimage_data.coffee()).save(plain_path)
    broken_path.write_bytes(b"\xff\xd8\xff garbage")
    inputs = ImageInputs([str(photo_path), str(plain_path), str(broken_path)], "folder")
    search = FaceSearch(inputs.paths, LbpFaceDetector(), margin=0.5)

    rows, crops = plan_face_rows([search[i] for i in range(len(search))], inputs, transform=None, fallback_size=32)

    assert [(r.path, r.item, r.face) for r in rows] == [(str(photo_path), 0, 0), (str(plain_path), None, None),
                                                        (str(broken_path), None, None)]  # fmt: skip
    assert "not an image" in rows[2].damaged and rows[1].damaged is None
    assert isinstance(crops, FaceCropDataset) and len(crops) == 1
    region = crops.regions[0]
    assert region[2] - region[0] == region[3] - region[1]  # square
    image, reason = crops.load(0)
    expected = Image.open(photo_path).convert("RGB").crop(region)
    assert reason is None and np.array_equal(np.asarray(image), np.asarray(expected))
    assert crops[0]["image"].shape == (3, image.height, image.width)
