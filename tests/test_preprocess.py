"""clipjax.preprocess against transformers' CLIPImageProcessorPil on real photos (skimage.data)."""

import os

import numpy as np
import pytest
from PIL import Image

from clipjax.preprocess import CLIP_MEAN, CLIP_STD, hf_image_processor, preprocess_images, resize_shape

skimage_data = pytest.importorskip("skimage.data")
DATA_DIR = os.path.dirname(skimage_data.__file__)

# Files shipped inside scikit-image (no download): RGB photos, a grayscale one, an RGBA logo.
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png", "logo.png", "horse.png"]


def _photo(name: str) -> Image.Image:
    path = os.path.join(DATA_DIR, name)
    if not os.path.exists(path):
        pytest.skip(f"{name} not shipped with this scikit-image")
    with Image.open(path) as image:
        image.load()
        return image


def _reference(images, image_size):
    """transformers' pixels, NCHW -> NHWC."""
    out = hf_image_processor(image_size)(images, return_tensors="np")["pixel_values"]
    return np.transpose(out, (0, 2, 3, 1))


def _max_diff(ours, ref):
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours.astype(np.float64) - ref)))


@pytest.mark.parametrize("image_size", [224, 336, 100])
def test_matches_transformers_on_photos(image_size):
    images = [_photo(name) for name in PHOTOS]
    # odd shapes exercise the size rounding and the crop offsets
    images += [images[0].crop((0, 0, 301, 173)), images[1].crop((3, 5, 200, 451)), images[2].resize((97, 97))]
    ours = preprocess_images(images, image_size=image_size)
    ref = _reference(images, image_size)
    diff = _max_diff(ours, ref)
    print(f"image_size={image_size}: max |ours - transformers| = {diff:.3g}")
    assert ours.dtype == np.float32 and ours.shape == (len(images), image_size, image_size, 3)
    assert diff <= 1e-5


def test_modes_match_transformers():
    """Modes transformers converts itself: grayscale, LA, P with transparency, CMYK, 1-bit; a
    16-bit image is where clipjax differs on purpose (rescaled, where transformers clips)."""
    rgb = _photo("chelsea.png").convert("RGB")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    gray16 = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    images = [rgb.convert("L"), rgba, rgba.convert("LA"), palette, rgb.convert("CMYK"), rgb.convert("1")]
    diff = _max_diff(preprocess_images(images), _reference(images, 224))
    print(f"modes: max |ours - transformers| = {diff:.3g}")
    assert diff <= 1e-5
    # 16-bit: the same picture as its 8-bit original (v / 257); transformers clips it to white
    np.testing.assert_array_equal(preprocess_images(gray16), preprocess_images(rgb.convert("L")))
    assert _max_diff(preprocess_images(gray16), _reference([gray16], 224)) > 1.0


def test_resize_shape_truncates_like_transformers():
    assert resize_shape(300, 200, 224) == (336, 224)
    assert resize_shape(173, 301, 224) == (224, 389)  # 389.7 -> 389, not 390
    assert resize_shape(50, 50, 224) == (224, 224)


def test_uint8_array_equals_pil():
    pil = _photo("astronaut.png").convert("RGB")
    array = np.asarray(pil)
    np.testing.assert_array_equal(preprocess_images(array), preprocess_images(pil))
    diff = _max_diff(preprocess_images(array), _reference([array], 224))
    assert diff <= 1e-5


def test_float_array_is_rounded_to_uint8():
    rng = np.random.default_rng(0)
    array = rng.random((120, 90, 3))
    for floats in (array, array.astype(np.float32)):
        expected = preprocess_images(np.round(floats.astype(np.float64) * 255).astype(np.uint8))
        np.testing.assert_array_equal(preprocess_images(floats), expected)
    batch = np.stack([array, array[::-1]])  # a 4-D array is a batch
    assert preprocess_images(batch).shape == (2, 224, 224, 3)


def test_grayscale_array():
    gray = np.asarray(_photo("camera.png").convert("L"))
    ours = preprocess_images(gray)
    np.testing.assert_array_equal(ours, preprocess_images(Image.fromarray(gray).convert("RGB")))
    np.testing.assert_array_equal(ours, preprocess_images(gray[..., None]))


def test_rgba_goes_onto_white():
    rgba = np.zeros((64, 64, 4), np.uint8)  # fully transparent black -> white
    ours = preprocess_images([rgba, Image.fromarray(rgba, mode="RGBA")])
    white = (1.0 - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    np.testing.assert_allclose(ours, np.broadcast_to(white, ours.shape), atol=1e-6)
    rgba = np.random.default_rng(1).integers(0, 256, (80, 60, 4), dtype=np.uint8)
    assert _max_diff(preprocess_images(rgba), _reference([rgba], 224)) <= 1e-5


def test_file_paths(tmp_path):
    pil = _photo("coffee.png").convert("RGB")
    path = tmp_path / "coffee.png"
    pil.save(path)
    expected = preprocess_images(pil)
    np.testing.assert_array_equal(preprocess_images(path), expected)
    np.testing.assert_array_equal(preprocess_images([str(path), path])[1], expected[0])


def test_corrupt_file_names_it(tmp_path):
    good = tmp_path / "good.jpg"
    _photo("rocket.jpg").save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:2000])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    for bad in (truncated, garbage, tmp_path / "missing.png"):
        with pytest.raises(ValueError, match=bad.name):
            preprocess_images([good, bad])


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4), np.int64), np.full((4, 4, 3), 2.0), 3, b"bytes"]
)
def test_unsupported_inputs(bad):
    with pytest.raises(ValueError):
        preprocess_images(bad)


def test_hf_image_processor_roundtrip(tmp_path):
    import transformers

    hf_image_processor(336).save_pretrained(tmp_path)
    loaded = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert loaded.size["shortest_edge"] == 336
    assert (loaded.crop_size["height"], loaded.crop_size["width"]) == (336, 336)
    np.testing.assert_allclose(loaded.image_mean, CLIP_MEAN)
    np.testing.assert_allclose(loaded.image_std, CLIP_STD)


def test_one_decoder_for_a_16_bit_png(tmp_path):
    """clip.encode_image(path) and the training / evaluation reader see the same pixels of a
    16-bit PNG: rescaled (v / 257), not clipped at 255 as PIL's convert("RGB") would."""
    from PIL import Image

    from clipjax.data.images import Counts, decode_image
    from clipjax.preprocess import preprocess_images

    a = np.random.default_rng(0).integers(0, 65535, (40, 48)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode == "I;16"
    decoded = decode_image(path.read_bytes(), Counts())
    np.testing.assert_array_equal(decoded[..., 0], np.round(a / 257.0).astype(np.uint8))
    assert (decoded == 255).mean() < 0.01
    np.testing.assert_array_equal(preprocess_images([str(path)], 32), preprocess_images([decoded], 32))
