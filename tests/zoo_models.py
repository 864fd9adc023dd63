"""The model zoo the conversion tests (and the coverage benchmark) run over.

Every entry builds a small, randomly initialised model (no weight download) and names the input
size it runs at. Overrides such as ``depth``/``embed_dim`` shrink the transformers to a few blocks:
conversion does not depend on width or depth, and the suite must stay fast on 2 CPU cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn


@dataclass(frozen=True)
class ZooCase:
    name: str
    build: Callable[[], nn.Module]
    input_size: int = 32
    slow: bool = False
    family: str = ""
    tags: tuple[str, ...] = field(default=())


def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)

    return build


def _tv(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)

    return build


def _tv_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    # reason: get_model("vit_b_16") fixes depth/width; build the same class at toy size.
    return VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128,
                             num_classes=10)


def _tv_swin(v2: bool) -> nn.Module:
    from torchvision.models import swin_transformer as sw

    extra = dict(block=sw.SwinTransformerBlockV2, downsample_layer=sw.PatchMergingV2) if v2 else {}
    return sw.SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                              window_size=[4, 4], num_classes=10, **extra)


_TINY_VIT = dict(embed_dim=64, depth=2, num_heads=2)

TIMM_CASES = [
    ZooCase("resnet18", _timm("resnet18"), family="resnet"),
    ZooCase("resnet10t", _timm("resnet10t"), family="resnet"),
    ZooCase("resnet26d", _timm("resnet26d"), family="resnet-d"),
    ZooCase("seresnext26t_32x4d", _timm("seresnext26t_32x4d"), family="resnext"),
    ZooCase("resnetv2_50x1_bit", _timm("resnetv2_50x1_bit"), family="resnetv2 (StdConv2d)", slow=True),
    ZooCase("efficientnet_b0", _timm("efficientnet_b0"), family="efficientnet"),
    ZooCase("tf_efficientnet_b0", _timm("tf_efficientnet_b0"), family="efficientnet (Conv2dSame)"),
    ZooCase("efficientnet_cc_b0_4e", _timm("efficientnet_cc_b0_4e"), family="efficientnet (CondConv2d)"),
    ZooCase("mixnet_s", _timm("mixnet_s"), family="mixnet (MixedConv2d)"),
    ZooCase("mobilenetv3_small_050", _timm("mobilenetv3_small_050"), family="mobilenetv3"),
    ZooCase("mobilenetv2_050", _timm("mobilenetv2_050"), family="mobilenetv2"),
    ZooCase("ghostnet_050", _timm("ghostnet_050"), family="ghostnet"),
    ZooCase("convnext_atto", _timm("convnext_atto"), family="convnext"),
    ZooCase("convnextv2_atto", _timm("convnextv2_atto"), family="convnextv2"),
    ZooCase("regnetx_002", _timm("regnetx_002"), family="regnet"),
    ZooCase("regnety_002", _timm("regnety_002"), family="regnet"),
    ZooCase("nf_resnet26", _timm("nf_resnet26"), family="nfnet (ScaledStdConv2d)"),
    ZooCase("nfnet_l0", _timm("nfnet_l0"), family="nfnet", slow=True),
    ZooCase("dla34", _timm("dla34"), family="dla"),
    ZooCase("densenet121", _timm("densenet121"), family="densenet", slow=True),
    ZooCase("cspresnet50", _timm("cspresnet50"), family="cspnet", slow=True),
    ZooCase("dpn48b", _timm("dpn48b"), family="dpn"),
    ZooCase("hrnet_w18_small", _timm("hrnet_w18_small"), family="hrnet", input_size=64, slow=True),
    ZooCase("rexnet_100", _timm("rexnet_100"), family="rexnet"),
    ZooCase("repvgg_a0", _timm("repvgg_a0"), family="repvgg"),
    ZooCase("vit_tiny_patch16_224", _timm("vit_tiny_patch16_224", img_size=32, depth=2), family="vit"),
    ZooCase("deit_tiny_patch16_224", _timm("deit_tiny_patch16_224", img_size=32, depth=2), family="deit"),
    ZooCase(
        "deit_tiny_distilled_patch16_224",
        _timm("deit_tiny_distilled_patch16_224", img_size=32, depth=2),
        family="deit",
    ),
    ZooCase("beit_base_patch16_224", _timm("beit_base_patch16_224", img_size=32, **_TINY_VIT), family="beit"),
    ZooCase("beitv2_base_patch16_224", _timm("beitv2_base_patch16_224", img_size=32, **_TINY_VIT), family="beit"),
    ZooCase("eva02_tiny_patch14_224", _timm("eva02_tiny_patch14_224", img_size=28, depth=2), 28, family="eva"),
    ZooCase("cait_xxs24_224", _timm("cait_xxs24_224", img_size=32, depth=2), family="cait"),
    ZooCase("xcit_nano_12_p16_224", _timm("xcit_nano_12_p16_224", img_size=32, depth=2), family="xcit"),
    ZooCase(
        "swin_tiny_patch4_window7_224",
        _timm("swin_tiny_patch4_window7_224", img_size=32, window_size=4, embed_dim=32, depths=(1, 1, 1, 1),
              num_heads=(1, 1, 1, 1)),
        family="swin",
    ),
    ZooCase(
        "swinv2_tiny_window8_256",
        _timm("swinv2_tiny_window8_256", img_size=64, window_size=4, embed_dim=32, depths=(1, 1, 1, 1),
              num_heads=(1, 1, 1, 1)),
        64,  # reason: at 32 px the last stage has one token, so its position-bias MLP gets no gradient
        family="swinv2",
    ),
    ZooCase("maxvit_pico_rw_256", _timm("maxvit_pico_rw_256", img_size=64), 64, family="maxvit", slow=True),
    ZooCase("coatnet_nano_rw_224", _timm("coatnet_nano_rw_224", img_size=64), 64, family="coatnet", slow=True),
    ZooCase("levit_128s", _timm("levit_128s", img_size=64), 64, family="levit"),
    ZooCase("poolformer_s12", _timm("poolformer_s12"), family="poolformer"),
    ZooCase("poolformerv2_s12", _timm("poolformerv2_s12"), family="metaformer"),
    ZooCase("mobilevit_xxs", _timm("mobilevit_xxs"), 64, family="mobilevit"),
    ZooCase("efficientformer_l1", _timm("efficientformer_l1"), 224, family="efficientformer", slow=True),
    ZooCase("edgenext_xx_small", _timm("edgenext_xx_small"), 64, family="edgenext"),
    ZooCase("pit_ti_224", _timm("pit_ti_224", img_size=64), 64, family="pit"),
    ZooCase("tnt_s_patch16_224", _timm("tnt_s_patch16_224", img_size=32, depth=2), family="tnt"),
    ZooCase("mixer_s16_224", _timm("mixer_s16_224", img_size=32), family="mlp-mixer"),
    ZooCase("resmlp_12_224", _timm("resmlp_12_224", img_size=32), family="resmlp"),
    ZooCase("gmlp_ti16_224", _timm("gmlp_ti16_224", img_size=32), family="gmlp"),
    ZooCase("inception_v3", _timm("inception_v3"), 75, family="inception", slow=True),
    ZooCase("vgg11", _timm("vgg11"), family="vgg", slow=True),
]

TORCHVISION_CASES = [
    ZooCase("tv_alexnet", _tv("alexnet"), 64, family="alexnet", slow=True),
    ZooCase("tv_convnext_tiny", _tv("convnext_tiny"), family="convnext", slow=True),
    ZooCase("tv_densenet121", _tv("densenet121"), family="densenet", slow=True),
    ZooCase("tv_efficientnet_b0", _tv("efficientnet_b0"), family="efficientnet"),
    ZooCase("tv_efficientnet_v2_s", _tv("efficientnet_v2_s"), family="efficientnet_v2", slow=True),
    ZooCase("tv_googlenet", _tv("googlenet", aux_logits=False, init_weights=True), family="googlenet"),
    ZooCase("tv_inception_v3", _tv("inception_v3", aux_logits=False, init_weights=True), 75, family="inception",
            slow=True),
    ZooCase("tv_maxvit_t", _tv("maxvit_t"), 224, family="maxvit", slow=True),
    ZooCase("tv_mnasnet0_5", _tv("mnasnet0_5"), family="mnasnet"),
    ZooCase("tv_mobilenet_v2", _tv("mobilenet_v2"), family="mobilenet_v2"),
    ZooCase("tv_mobilenet_v3_small", _tv("mobilenet_v3_small"), family="mobilenet_v3"),
    ZooCase("tv_regnet_x_400mf", _tv("regnet_x_400mf"), family="regnet"),
    ZooCase("tv_resnet18", _tv("resnet18"), family="resnet"),
    ZooCase("tv_resnext50_32x4d", _tv("resnext50_32x4d"), family="resnext", slow=True),
    ZooCase("tv_wide_resnet50_2", _tv("wide_resnet50_2"), family="wide_resnet", slow=True),
    ZooCase("tv_shufflenet_v2_x0_5", _tv("shufflenet_v2_x0_5"), family="shufflenet_v2"),
    ZooCase("tv_squeezenet1_1", _tv("squeezenet1_1"), family="squeezenet"),
    ZooCase("tv_vgg11_bn", _tv("vgg11_bn"), family="vgg", slow=True),
    ZooCase("tv_vit", _tv_vit, family="vit (nn.MultiheadAttention)"),
    ZooCase("tv_swin", lambda: _tv_swin(v2=False), family="swin (F.linear on qkv)"),
    ZooCase("tv_swin_v2", lambda: _tv_swin(v2=True), family="swin_v2"),
]

ZOO = TIMM_CASES + TORCHVISION_CASES
