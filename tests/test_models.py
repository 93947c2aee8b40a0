import math

import keras
import numpy as np
import pytest
from keras.src.utils import file_utils

from ham_utils.config import ParamsError
from ham_utils.model.build import (
    BACKBONES,
    CaffePreprocessing,
    WeightsUnavailableError,
    backbone_layers,
    build_model,
    feature_layer_name,
    freeze_backbone,
    get_backbone,
    load_model,
    unfreeze_backbone,
)

SIZE = 32
BN = keras.layers.BatchNormalization


@pytest.fixture
def pixels() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")


@pytest.fixture
def b0() -> keras.Model:
    return build_model("efficientnetb0", SIZE, weights="none")


@pytest.fixture
def mixed_bfloat16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _trainable_layer_names(model: keras.Model) -> set[str]:
    return {layer.name for layer in model.layers if layer.trainable_weights}


def test_registry_covers_the_recipes():
    expected = {f"efficientnetb{i}" for i in range(8)}
    expected |= {f"efficientnetv2{v}" for v in ("b0", "b1", "b2", "b3", "s")}
    expected |= {f"efficientnet_lite{i}" for i in range(3)}
    assert set(BACKBONES) == expected | {"resnet50", "xception"}
    assert get_backbone("EfficientNetB3").image_size == 300
    assert get_backbone("efficientnetb4").image_size == 380
    for spec in BACKBONES.values():
        if not spec.is_lite:
            assert callable(getattr(keras.applications, spec.application)), spec.name
    with pytest.raises(ParamsError, match="efficientnetb3"):
        get_backbone("efficientnet-b3")


def test_model_outputs_probabilities_after_float32_logits(b0, pixels):
    probabilities = b0.predict(pixels, verbose=0)
    assert probabilities.shape == (2, 7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert b0.get_layer("logits").units == 7
    assert b0.layers[-1].name == "probabilities"
    assert b0.get_layer("probabilities").input is b0.get_layer("logits").output
    assert tuple(b0.input.shape) == (None, SIZE, SIZE, 3)


def test_b3_head_layers():
    model = build_model("efficientnetb0", SIZE, head="b3", dropout=0.3, num_classes=5)
    dense = [model.get_layer(f"head_dense_{i}") for i in (1, 2)]
    assert [d.units for d in dense] == [384, 128]
    assert all(d.activation.__name__ in ("swish", "silu") for d in dense)  # Keras 3 calls it silu
    assert all(isinstance(model.get_layer(f"head_bn_{i}"), BN) for i in (1, 2))
    rates = [model.get_layer(f"head_dropout_{i}").rate for i in (1, 2)]
    assert rates == pytest.approx([0.3, 0.2])
    assert model.output.shape[-1] == 5


def test_output_stays_float32_under_mixed_precision(mixed_bfloat16, pixels):
    model = build_model("efficientnetb0", SIZE, head="b3")
    assert model.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert model.get_layer("logits").compute_dtype == "float32"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert model.output.dtype == "float32"
    assert model.predict(pixels, verbose=0).dtype == np.float32


def test_feature_layer_is_the_last_backbone_feature_map(b0):
    assert feature_layer_name(b0) == "top_activation"
    last_4d = [layer.name for layer in backbone_layers(b0) if len(layer.output.shape) == 4][-1]
    assert last_4d == "top_activation"


@pytest.fixture(scope="module")
def resnet() -> keras.Model:
    return build_model("resnet50", SIZE)


def test_resnet_takes_0_255_rgb_through_a_caffe_preprocessing_layer(resnet, pixels):
    layer = resnet.get_layer("imagenet_preprocessing")
    assert isinstance(layer, CaffePreprocessing)
    expected = keras.applications.resnet50.preprocess_input(pixels.copy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(pixels)), expected, atol=1e-4)
    assert feature_layer_name(resnet) == "conv5_block3_out"
    assert unfreeze_backbone(resnet, 2) == ["conv5_block2", "conv5_block3"]


def test_xception_takes_0_255_rgb_through_a_rescaling_layer():
    model = build_model("xception", 71)
    preprocess = keras.Model(model.input, model.get_layer("imagenet_preprocessing").output)
    x = np.random.default_rng(1).uniform(0, 255, (1, 71, 71, 3)).astype("float32")
    expected = keras.applications.xception.preprocess_input(x.copy())
    np.testing.assert_allclose(preprocess.predict(x, verbose=0), expected, atol=1e-5)
    assert feature_layer_name(model) == "block14_sepconv2_act"


def test_freeze_leaves_only_the_head_trainable(b0):
    freeze_backbone(b0)
    assert _trainable_layer_names(b0) == {"logits"}


def test_unfreeze_top_blocks_keeps_batch_norm_frozen(b0):
    freeze_backbone(b0)
    frozen_count = len(b0.trainable_weights)

    assert unfreeze_backbone(b0, 2) == ["block6d", "block7a"]
    top_two = {
        layer.name
        for layer in b0.layers
        if layer.weights
        and not isinstance(layer, BN)
        and layer.name.startswith(("block6d_", "block7a_", "top_"))
    }
    assert _trainable_layer_names(b0) == top_two | {"logits"}
    assert "top_conv" in top_two
    top_two_count = len(b0.trainable_weights)

    unfreeze_backbone(b0, "all")
    assert "stem_conv" in _trainable_layer_names(b0)
    assert not any(layer.trainable for layer in backbone_layers(b0) if isinstance(layer, BN))
    assert frozen_count < top_two_count < len(b0.trainable_weights)

    unfreeze_backbone(b0, 0)
    assert _trainable_layer_names(b0) == {"logits"}
    with pytest.raises(ParamsError):
        unfreeze_backbone(b0, "top")


def test_model_trains_one_step_after_unfreezing(b0, pixels):
    freeze_backbone(b0)
    unfreeze_backbone(b0, 1)
    b0.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    watched = ("stem_conv", "top_conv", "top_bn", "logits")
    before = {name: [w.copy() for w in b0.get_layer(name).get_weights()] for name in watched}
    labels = np.eye(7, dtype="float32")[[0, 4]]
    loss = b0.train_on_batch(pixels, labels)
    assert math.isfinite(float(np.ravel(loss)[0]))
    after = {name: b0.get_layer(name).get_weights() for name in watched}

    def changed(name: str) -> bool:
        return any(not np.array_equal(a, b) for a, b in zip(before[name], after[name], strict=True))

    assert changed("top_conv") and changed("logits")
    # The stem is frozen; BN weights and moving statistics stay (inference mode).
    assert not changed("stem_conv") and not changed("top_bn")


def test_missing_weights_file_names_the_file_and_the_fixes(tmp_path):
    missing = tmp_path / "b0_notop.h5"
    with pytest.raises(WeightsUnavailableError, match=r"b0_notop\.h5.*weights: none"):
        build_model("efficientnetb0", SIZE, weights=str(missing))


def test_imagenet_download_failure_is_an_error_not_a_fallback(monkeypatch):
    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com: no route")

    monkeypatch.setattr(file_utils, "get_file", no_network)
    with pytest.raises(WeightsUnavailableError) as caught:
        build_model("efficientnetb3", SIZE, weights="imagenet")
    message = str(caught.value)
    for part in ("efficientnetb3", "URL fetch failure", "~/.keras/models", "weights: none"):
        assert part in message


def test_local_weights_file_is_loaded(tmp_path):
    source = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
    )
    path = tmp_path / "b0_notop.weights.h5"
    source.save_weights(path)
    model = build_model("efficientnetb0", SIZE, weights=str(path))
    for name in ("stem_conv", "block4b_expand_conv", "top_conv", "top_bn"):
        for loaded, saved in zip(
            model.get_layer(name).get_weights(), source.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(loaded, saved)


@pytest.mark.parametrize("backbone, head", [("efficientnetb0", "b3"), ("resnet50", "simple")])
def test_keras_file_round_trip_gives_identical_predictions(tmp_path, pixels, backbone, head):
    model = build_model(backbone, SIZE, head=head)
    path = tmp_path / "best.keras"
    model.save(path)
    reloaded = load_model(path)
    np.testing.assert_array_equal(
        reloaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0)
    )
    assert feature_layer_name(reloaded) == feature_layer_name(model)
