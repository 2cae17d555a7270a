"""Generate the two-stage detectors in nets/detection/ as Caffe (V2) test prototxt.

    python tools/gen_detection.py                  # rewrite every nets/detection/<key>.prototxt
    python tools/gen_detection.py faster_rcnn_zf   # only the named nets

Each net is the layer-for-layer equivalent of a published test definition (named in its header,
with the repository commit), written with protonet/netspec.py: the same layers, names, blobs and
parameters, including the RPN's ``Python`` proposal layer, which protonet recognises by module
and class. Fillers are protonet's choice (xavier, msra for ResNet) so that a net compiled without
weights computes something meaningful; the originals leave most layers at Caffe's constant-0
default. ``generate(key)`` returns the text; tests/test_detection_nets.py checks nets/detection/
is up to date.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Dict, List, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tools"))

from gen_zoo import write_nets  # noqa: E402
from protonet.netspec import Blob, NetSpec  # noqa: E402

OUT_DIR = ROOT / "nets" / "detection"
PY_FASTER_RCNN = "rbgirshick/py-faster-rcnn@781a917b378dbfdedb45b6a56189a31982da1b43"
PY_RFCN = "YuwenXiong/py-R-FCN@290dba7fad47f1ec74e2d1675e72cca6efb6cc14"
CLASSES = 21  # PASCAL VOC: 20 classes and background


def _header(title: str, source: str, path: str, notes: Sequence[str]) -> List[str]:
    return [f"{title} -- Caffe test prototxt (current V2 format)", "",
            f"Equivalent of: {source} {path}",
            "Input:       data 1x3x224x224 and im_info 1x3 (height, width, scale), as the original;",
            "             detection runs at any size: --input-shape data=1,3,H,W", *notes]


def _rpn(n: NetSpec, feat: Blob, width: int) -> Blob:
    """py-faster-rcnn's RPN head and its Python proposal layer (9 anchors, stride 16)."""
    x = n.conv(feat, width, kernel=3, pad=1, name="rpn_conv/3x3", top="rpn/output")
    x = n.relu(x, name="rpn_relu/3x3")
    cls = n.conv(x, 18, kernel=1, name="rpn_cls_score")
    bbox = n.conv(x, 36, kernel=1, name="rpn_bbox_pred")
    cls = n.reshape(cls, (0, 2, -1, 0), name="rpn_cls_score_reshape")
    cls = n.softmax(cls, name="rpn_cls_prob")
    cls = n.reshape(cls, (0, 18, -1, 0), name="rpn_cls_prob_reshape")
    return n.layer("Python", [cls, bbox, Blob("im_info")], name="proposal", top="rois", params={
        "python_param": {"module": "rpn.proposal_layer", "layer": "ProposalLayer", "param_str": "'feat_stride': 16"}})


def _fast_rcnn_head(n: NetSpec, feat: Blob, rois: Blob, pooled: int, name: str, top: str,
                    scale_train: bool) -> None:
    """ROI pooling, fc6/fc7 (ReLU, Dropout; ``scale_train: false``, caffe-fast-rcnn's field,
    scales at test time), the class scores and per-class boxes."""
    x = n.layer("ROIPooling", [feat, rois], name=name, top=top, params={
        "roi_pooling_param": {"pooled_w": pooled, "pooled_h": pooled, "spatial_scale": 0.0625}})
    for i in (6, 7):
        x = n.inner_product(x, 4096, name=f"fc{i}")
        x = n.relu(x, name=f"relu{i}")
        drop = {"dropout_ratio": 0.5} if scale_train else {"dropout_ratio": 0.5, "scale_train": False}
        x = n.layer("Dropout", [x], name=f"drop{i}", inplace=True, params={"dropout_param": drop})
    cls = n.inner_product(x, CLASSES, name="cls_score")
    n.inner_product(x, 4 * CLASSES, name="bbox_pred")
    n.softmax(cls, name="cls_prob")


def _inputs(n: NetSpec) -> Blob:
    x = n.input("data", (1, 3, 224, 224))
    n.input("im_info", (1, 3))
    return x


def build_faster_rcnn_zf() -> NetSpec:
    n = NetSpec("ZF", _header("Faster R-CNN, ZF (PASCAL VOC, end to end)", PY_FASTER_RCNN,
                              "models/pascal_voc/ZF/faster_rcnn_end2end/test.prototxt", []),
                weight_filler="xavier", bias_filler=0)
    x = _inputs(n)
    for i, (c, k, s, p) in enumerate(((96, 7, 2, 3), (256, 5, 2, 2)), start=1):
        x = n.conv(x, c, kernel=k, stride=s, pad=p, name=f"conv{i}")
        x = n.relu(x, name=f"relu{i}")
        x = n.lrn(x, 3, 0.00005, 0.75, norm_region="WITHIN_CHANNEL", name=f"norm{i}")
        x = n.pool(x, "MAX", kernel=3, stride=2, pad=1, name=f"pool{i}")
    for i, c in ((3, 384), (4, 384), (5, 256)):
        x = n.conv(x, c, kernel=3, pad=1, name=f"conv{i}")
        x = n.relu(x, name=f"relu{i}")
    _fast_rcnn_head(n, x, _rpn(n, x, 256), 6, "roi_pool_conv5", "roi_pool_conv5", scale_train=False)
    return n


def build_faster_rcnn_vgg16() -> NetSpec:
    n = NetSpec("VGG_ILSVRC_16_layers", _header(
        "Faster R-CNN, VGG-16 (PASCAL VOC, end to end)", PY_FASTER_RCNN,
        "models/pascal_voc/VGG16/faster_rcnn_end2end/test.prototxt", []),
        weight_filler="xavier", bias_filler=0)
    x = _inputs(n)
    for stage, (reps, c) in enumerate(zip((2, 2, 3, 3, 3), (64, 128, 256, 512, 512)), start=1):
        for j in range(1, reps + 1):
            x = n.conv(x, c, kernel=3, pad=1, name=f"conv{stage}_{j}")
            x = n.relu(x, name=f"relu{stage}_{j}")
        if stage < 5:
            x = n.pool(x, "MAX", kernel=2, stride=2, name=f"pool{stage}")
    _fast_rcnn_head(n, x, _rpn(n, x, 512), 7, "roi_pool5", "pool5", scale_train=True)
    return n


def build_rfcn_resnet50() -> NetSpec:
    n = NetSpec("ResNet50", _header(
        "R-FCN, ResNet-50 (PASCAL VOC, end to end, class-agnostic boxes)", PY_RFCN,
        "models/pascal_voc/ResNet-50/rfcn_end2end/test_agnostic.prototxt",
        ["ResNet-50 as Kaiming He's Caffe model (BatchNorm + Scale, stride 2 on branch2a); res5 keeps "
         "stride 1 with dilation 2 on its 3x3 convolutions (R-FCN's a trous res5); the RPN reads res4f",
         "position-sensitive score maps: 21 classes x 7 x 7 and 2 x 4 boxes x 7 x 7, PSROIPooling at 1/16, "
         "7x7 average pooling per ROI"]),
        weight_filler="msra", bias_filler=0)

    def cbs(inp: Blob, c: int, k: int, s: int, tag: str, relu: bool, dilation: int = 1) -> Blob:
        y = n.conv(inp, c, kernel=k, stride=s, pad=dilation * (k // 2), dilation=dilation, bias=False,
                   name=f"res{tag}")
        y = n.batchnorm_scale(y, bn_name=f"bn{tag}", scale_name=f"scale{tag}")
        return n.relu(y, name=f"res{tag}_relu") if relu else y

    x = _inputs(n)
    x = n.conv(x, 64, kernel=7, stride=2, pad=3, name="conv1")  # with a bias, unlike the ImageNet model
    x = n.batchnorm_scale(x, bn_name="bn_conv1", scale_name="scale_conv1")
    x = n.relu(x, name="conv1_relu")
    x = n.pool(x, "MAX", kernel=3, stride=2, name="pool1")
    res4f = x
    for stage, blocks in ((2, 3), (3, 4), (4, 6), (5, 3)):
        width = 64 * 2 ** (stage - 2)
        dilation = 2 if stage == 5 else 1
        for bi in range(blocks):
            tag = f"{stage}{'abcdef'[bi]}"
            s = 2 if bi == 0 and stage in (3, 4) else 1
            short = cbs(x, width * 4, 1, s, f"{tag}_branch1", relu=False) if bi == 0 else x
            y = cbs(x, width, 1, s, f"{tag}_branch2a", relu=True)
            y = cbs(y, width, 3, 1, f"{tag}_branch2b", relu=True, dilation=dilation)
            y = cbs(y, width * 4, 1, 1, f"{tag}_branch2c", relu=False)
            x = n.relu(n.eltwise([short, y], "SUM", name=f"res{tag}"), name=f"res{tag}_relu")
        if stage == 4:
            res4f = x
    rois = _rpn(n, res4f, 512)
    x = n.relu(n.conv(x, 1024, kernel=1, name="conv_new_1"), name="conv_new_1_relu")
    heads = {}
    maps = {kind: n.conv(x, dim * 49, kernel=1, name=f"rfcn_{kind}") for kind, dim in (("cls", CLASSES), ("bbox", 8))}
    for kind, dim, pooled, ave, out in (("cls", CLASSES, "psroipooled_cls_rois", "ave_cls_score_rois", "cls_score"),
                                        ("bbox", 8, "psroipooled_loc_rois", "ave_bbox_pred_rois", "bbox_pred_pre")):
        ps = n.layer("PSROIPooling", [maps[kind], rois], name=pooled, params={
            "psroi_pooling_param": {"spatial_scale": 0.0625, "output_dim": dim, "group_size": 7}})
        heads[kind] = n.pool(ps, "AVE", kernel=7, stride=7, name=ave, top=out)
    prob = n.softmax(heads["cls"], name="cls_prob", top="cls_prob_pre")
    n.reshape(prob, (-1, CLASSES), name="cls_prob_reshape", top="cls_prob")
    n.reshape(heads["bbox"], (-1, 8), name="bbox_pred_reshape", top="bbox_pred")
    return n


BUILDERS: Dict[str, Callable[[], NetSpec]] = {
    "faster_rcnn_zf": build_faster_rcnn_zf,
    "faster_rcnn_vgg16": build_faster_rcnn_vgg16,
    "rfcn_resnet50": build_rfcn_resnet50,
}


def generate(key: str) -> str:
    """The prototxt text of net ``key`` (nothing is written)."""
    return BUILDERS[key]().to_prototxt()


if __name__ == "__main__":
    raise SystemExit(write_nets(BUILDERS, OUT_DIR, sys.argv[1:]))
