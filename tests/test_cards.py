"""Issue 2: the zoo as data — every seed model has a card, and timm rows match measured size."""
import pytest

import cvzoo
from cvzoo.card import get_card, list_models
from cvzoo.errors import CvzooError
from cvzoo.profile import profile_model

SEED_MODELS = {
    "vovnet": ["ese_vovnet19b_dw", "ese_vovnet39b", "vovnet27_slim", "vovnet39", "vovnet57"],
    "cspnet": ["cspresnet50", "cspresnext50", "cspdarknet53"],
    "dla": ["dla34", "dla46_c", "dla46x_c", "dla60", "dla60x", "dla60x_c", "dla102", "dla102x", "dla102x2",
            "dla169", "dla60_res2net", "dla60_res2next"],
    "efficientnet": ["efficientnetv2_rw_t", "efficientnetv2_rw_s", "efficientnetv2_rw_m",
                     "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"],
}
TIMM_ROWS = [(c.name, c.published_row("timm")) for c in list_models() if c.published_row("timm")]


def test_every_seed_model_has_a_card():
    names = {c.name for c in list_models()}
    for family, models in SEED_MODELS.items():
        for name in models:
            assert name in names
            assert get_card(name).family == family
    assert {c.name for c in list_models("dla")} >= set(SEED_MODELS["dla"])


def test_seed_table_rows_are_all_there():
    # seed tables: 2 vovnet + 7 cspnet + 31 dla (12 timm, 9 ppcls, 10 ucbdrive) + 3 efficientnetv2 rows
    rows = [(c.name, r.source) for c in list_models() for r in c.published if r.dataset == "imagenet-val"]
    assert len(rows) == 2 + 7 + 31 + 3
    assert get_card("cspdarknet53.ppcls").published_row("ppcls").params_m == 41.6
    assert get_card("dla34").published_row("ucbdrive").flops_g == 6.875
    # a row sits on the card whose weights it describes: mmcls / ppcls rows on those sources' cards
    assert all(r.source == "mmcls" for c in list_models() if "mmcls" in c.checkpoint for r in c.published)
    assert all(r.source == "ppcls" for c in list_models() if "ppcls" in c.checkpoint for r in c.published)
    assert not get_card("cspresnet50").published_row("mmcls") and not get_card("dla34").published_row("ppcls")


def test_card_preprocessing_follows_seeds():
    assert get_card("cspresnet50").preprocessing.resize_size == 288  # floor(256 / 0.887)
    assert get_card("dla34").preprocessing.resize_size == 256
    assert get_card("ese_vovnet39b").preprocessing.resize_size == 256  # seed: Resize(256), CenterCrop(224)
    # the sources' own eval configs: mmcls ResizeEdge(288) -> CenterCrop(256); ppcls resize_short 256 -> 224
    mm, pp = get_card("cspresnet50.mmcls").preprocessing, get_card("dla34.ppcls").preprocessing
    assert (mm.resize_size, mm.input_size, mm.interpolation, mm.resampler) == (288, 256, "bicubic", "pillow")
    assert (pp.resize_size, pp.input_size, pp.resampler, pp.long_side, pp.crop_offset) == \
        (256, 224, "opencv", "round", "floor")
    lite = get_card("tf_efficientnet_lite0").preprocessing
    assert lite.mean == (0.5, 0.5, 0.5) and lite.interpolation == "bicubic"
    fx = get_card("dla34-imagenette")
    assert fx.num_classes == 10 and fx.class_names[0] == "tench" and fx.preprocessing.resize_size == 128


def test_unknown_model_suggests_close_names():
    with pytest.raises(CvzooError, match="did you mean dla34"):
        get_card("dla43")


def test_public_api_is_lazy_and_complete():
    assert cvzoo.get_card("dla34").arch == "dla34"
    assert len(cvzoo.list_models()) >= 30
    for name in cvzoo.__all__:
        assert getattr(cvzoo, name) is not None
    assert callable(cvzoo.export_model) and callable(cvzoo.build_artifact) and callable(cvzoo.evaluate_model)


@pytest.mark.parametrize("name,row", TIMM_ROWS, ids=[n for n, _ in TIMM_ROWS])
def test_timm_rows_match_measured_size(name, row):
    prof = profile_model(name, row.input_size)
    # exact for DLA; timm's newer code shifts a few others by < 1% (e.g. efficientnetv2_rw_t 7.022 vs 7.032)
    if get_card(name).family == "dla":
        assert prof.seed_flops_g == pytest.approx(row.flops_g, abs=1e-3)
        assert prof.thop_params_m == pytest.approx(row.params_m, abs=1e-3)
    else:
        assert prof.seed_flops_g == pytest.approx(row.flops_g, rel=0.01)
        assert prof.thop_params_m == pytest.approx(row.params_m, rel=0.01)
    assert prof.params_m >= prof.thop_params_m  # thop skips a few parameter kinds, never adds
    assert 0 < prof.gmacs <= prof.thop_gmacs * 1.001


def test_preprocessing_at_another_size_keeps_the_crop_ratio():
    """export/build --size N: a stated short side (mmcls, ppcls) scales like timm's crop_pct rule."""
    timm_rule, stated = get_card("dla34").preprocessing, get_card("dla34.ppcls").preprocessing
    assert stated.at_size(224) is stated
    assert timm_rule.at_size(192).resize_size == stated.at_size(192).resize_size == 219  # floor(192/0.875)
    mm = get_card("cspresnet50.mmcls").preprocessing.at_size(320)
    assert (mm.input_size, mm.resize_size, mm.resampler, mm.exif_orientation) == (320, 360, "pillow", True)
