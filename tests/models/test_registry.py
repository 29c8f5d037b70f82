import pytest

from lowformer import LowformerError, create_model, resolve
from lowformer.data.preprocess import lowformer_protocol


@pytest.mark.parametrize("name,key", [("b0", "b0"), ("B1", "b1"), ("b1.5", "b15"), ("B15", "b15"),
                                      ("E3", "e3"), ("lowformer_e2", "e2"), ("timm:lowformer_b3", "b3")])
def test_variant_names_resolve(name, key):
    assert resolve(name).name == key


def test_b2_exists_without_published_weights():
    spec = resolve("b2")
    assert spec.timm_name == "lowformer_b2" and not spec.has_weights and spec.published is None


def test_unknown_names_fail_with_hint():
    with pytest.raises(LowformerError, match="unknown model 'b9'"):
        resolve("b9")
    with pytest.raises(LowformerError, match="did you mean .*resnet50"):
        resolve("timm:resnet5")


def test_lowformer_preprocessing_is_the_paper_protocol():
    p = resolve("b1").preprocessing(224)
    assert (p.crop, p.resize, p.interpolation) == (224, 236, "bicubic")
    assert p.mean == (0.485, 0.456, 0.406) and p.std == (0.229, 0.224, 0.225)
    assert lowformer_protocol(200).resize == 211  # ceil(200 / 0.95)


def test_timm_models_use_their_pretrained_config():
    p = resolve("timm:tf_efficientnet_lite0").preprocessing()
    assert p.mean == (0.5, 0.5, 0.5) and p.resize == 256  # crop_pct 0.875 -> floor(224 / 0.875)


def test_timm_model_builds_with_other_class_count():
    model = create_model("timm:resnet18", num_classes=7)
    assert model.fc.out_features == 7 and not model.training
