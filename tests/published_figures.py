"""Published parameter and multiply-accumulate (MAC) counts for every net in nets/.

One entry per ``nets/<key>.prototxt``.  Fields:

* ``title``: the network's name.
* ``paper``: the paper that defined it.
* ``input``: the deploy input shape (N, C, H, W) used in the prototxt.
* ``params``: the published parameter count (int).
* ``macs``: the published multiply-accumulate count for one image (float).
  Papers often say "FLOPs" or "multiply-adds" for this same quantity.
* ``macs_input``: (optional) the input shape the published MACs refer to, when
  it differs from ``input`` (compare MACs after re-shaping the net's input).
* ``approx``: True where the published figure is itself rounded / approximate
  or comes from a secondary table rather than the paper.
* ``source``: where the figures come from.
* ``convention``: how they are counted.
* ``params_include_biases``: whether ``params`` counts biases (and the
  BatchNorm/Scale affine parameters for BN nets).

Counting convention used by tools/zoo_check.py to verify the nets (and the one
protonet's summary is expected to follow): params = learnable weights + biases
(+ Scale gamma/beta for BN nets; BatchNorm running mean/variance are not
counted); MACs = multiply-adds of Convolution and InnerProduct layers only, a
grouped convolution counted per group (Cout * Cin/group * kh * kw * Hout * Wout),
biases, BN, pooling, LRN and activations not counted.
"""

from __future__ import annotations

from typing import Any, Dict

_CONV_FC = ("MACs count Convolution and InnerProduct multiply-adds only "
            "(grouped conv counted per group); pooling, LRN, BN, activations "
            "and biases not counted")
_PARAMS_B = "params include biases"
_PARAMS_BN = ("params include conv/FC weights, biases and BN affine (Scale gamma/beta); "
              "BN running mean/variance not counted")

PUBLISHED: Dict[str, Dict[str, Any]] = {
    "lenet": dict(
        title="LeNet (Caffe MNIST LeNet)",
        paper="LeCun et al., Gradient-based learning applied to document recognition, Proc. IEEE 1998 "
              "(Caffe examples/mnist/lenet.prototxt variant: 20/50 conv maps, 500-unit ip1)",
        input=(1, 1, 28, 28), params=431_080, macs=2.3e6, approx=False,
        source="Caffe examples/mnist/lenet.prototxt (431,080 params incl. biases, ~2.29M MACs, "
               "widely quoted as 431k / 2.3M)",
        convention=f"{_PARAMS_B}; {_CONV_FC}", params_include_biases=True),
    "alexnet": dict(
        title="AlexNet (BVLC AlexNet)",
        paper="Krizhevsky, Sutskever & Hinton, ImageNet Classification with Deep CNNs, NIPS 2012",
        input=(1, 3, 227, 227), params=61_000_000, macs=724e6, approx=False,
        source="Sze et al., Efficient Processing of Deep Neural Networks, Proc. IEEE 2017, Table 3 "
               "(61M weights, 724M MACs); BVLC models/bvlc_alexnet/deploy.prototxt",
        convention=f"{_PARAMS_B}; {_CONV_FC}", params_include_biases=True),
    "caffenet": dict(
        title="CaffeNet (BVLC reference CaffeNet)",
        paper="Jia et al., Caffe, 2014 (AlexNet variant: pooling before LRN)",
        input=(1, 3, 227, 227), params=61_000_000, macs=724e6, approx=False,
        source="same layer sizes as AlexNet: Sze et al. 2017, Table 3 (61M, 724M MACs); "
               "BVLC models/bvlc_reference_caffenet/deploy.prototxt",
        convention=f"{_PARAMS_B}; {_CONV_FC}", params_include_biases=True),
    "zfnet": dict(
        title="ZFNet",
        paper="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014 (Fig. 3)",
        input=(1, 3, 224, 224), params=62_000_000, macs=1.2e9, approx=True,
        source="approximate figures computed from the architecture of Zeiler & Fergus 2014, Fig. 3 "
               "(widely quoted as ~62M params / ~1.2G MACs)",
        convention=f"{_PARAMS_B}; {_CONV_FC}", params_include_biases=True),
    "overfeat_fast": dict(
        title="OverFeat (fast model)",
        paper="Sermanet et al., OverFeat: Integrated Recognition, Localization and Detection "
              "using Convolutional Networks, ICLR 2014 (Table 1)",
        input=(1, 3, 231, 231), params=145_000_000, macs=2.8e9, approx=True,
        source="Sermanet et al. 2014, Section 3 / Table 1 (fast model: ~145M params, ~2.8G mult-adds), approximate",
        convention=f"{_PARAMS_B}; {_CONV_FC}", params_include_biases=True),
    "nin": dict(
        title="Network in Network (ImageNet model)",
        paper="Lin, Chen & Yan, Network In Network, ICLR 2014 (Caffe model zoo nin_imagenet)",
        input=(1, 3, 224, 224), params=7_600_000, macs=1.1e9, approx=True,
        source="approximate, computed from the Caffe model-zoo NIN ImageNet definition (~7.6M params, ~1.1G MACs)",
        convention=f"{_PARAMS_B}; {_CONV_FC}", params_include_biases=True),
    "vgg11": dict(
        title="VGG-11 (configuration A)",
        paper="Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, ICLR 2015",
        input=(1, 3, 224, 224), params=132_863_336, macs=7.6e9, approx=False,
        source="Simonyan & Zisserman 2015, Table 2 (133M params); MACs 7.6G from widely used tables "
               "(e.g. torchvision model docs: 7.61 GFLOPS)",
        convention=f"{_PARAMS_B}; {_CONV_FC}", params_include_biases=True),
    "vgg13": dict(
        title="VGG-13 (configuration B)",
        paper="Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, ICLR 2015",
        input=(1, 3, 224, 224), params=133_047_848, macs=11.3e9, approx=False,
        source="Simonyan & Zisserman 2015, Table 2 (133M params); MACs 11.3G from widely used tables "
               "(e.g. torchvision model docs: 11.31 GFLOPS)",
        convention=f"{_PARAMS_B}; {_CONV_FC}", params_include_biases=True),
    "vgg16": dict(
        title="VGG-16 (configuration D, VGG_ILSVRC_16_layers)",
        paper="Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, ICLR 2015",
        input=(1, 3, 224, 224), params=138_357_544, macs=15.47e9, approx=False,
        source="Simonyan & Zisserman 2015, Table 2 (138M; exactly 138,357,544 incl. biases, "
               "138,344,128 weights without biases); 15.47G MACs (Sze et al. 2017, Table 3: 15.5G)",
        convention=f"{_PARAMS_B}; {_CONV_FC}", params_include_biases=True),
    "vgg19": dict(
        title="VGG-19 (configuration E)",
        paper="Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, ICLR 2015",
        input=(1, 3, 224, 224), params=143_667_240, macs=19.6e9, approx=False,
        source="Simonyan & Zisserman 2015, Table 2 (144M params); MACs 19.6G from widely used tables "
               "(e.g. torchvision model docs: 19.63 GFLOPS)",
        convention=f"{_PARAMS_B}; {_CONV_FC}", params_include_biases=True),
    "googlenet": dict(
        title="GoogLeNet (BVLC GoogLeNet, Inception v1)",
        paper="Szegedy et al., Going Deeper with Convolutions, CVPR 2015 (Table 1)",
        input=(1, 3, 224, 224), params=7_000_000, macs=1.586e9, macs_published=1.5e9, approx=True,
        source="Szegedy et al. 2015, Table 1 (~6.8M params without auxiliary heads, 1.5G mult-adds); "
               "Sze et al. 2017, Table 3 (7M weights, 1.43G MACs)",
        convention=f"{_PARAMS_B}; {_CONV_FC}; Caffe ceil-mode pooling shapes. MACs: Table 1's ops "
                   "column sums to 1.50G, but its conv1 row (34M ops) undercounts the 7x7/2 convolution "
                   "with 64 filters on a 224x224x3 input (112*112*64*7*7*3 = 118M); every other row "
                   "matches a per-layer count (e.g. inception 3a 128M, conv2 360M). With conv1 "
                   "corrected, Table 1 sums to 1.586G, the figure compared here",
        params_include_biases=True),
    "bn_inception": dict(
        title="BN-Inception (Inception v2)",
        paper="Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by "
              "Reducing Internal Covariate Shift, ICML 2015 (Figure 5)",
        input=(1, 3, 224, 224), params=11_300_000, macs=2.0e9, approx=True,
        source="widely used tables (e.g. Bianco et al., Benchmark Analysis of Representative DNN "
               "Architectures, IEEE Access 2018): ~11.3M params, ~2.0G MACs",
        convention=f"{_PARAMS_BN}; {_CONV_FC}", params_include_biases=True),
    "inception_v3": dict(
        title="Inception-v3",
        paper="Szegedy et al., Rethinking the Inception Architecture for Computer Vision, CVPR 2016",
        input=(1, 3, 299, 299), params=23_800_000, macs=5.7e9, approx=True,
        source="Keras Applications table (23.85M params, no auxiliary head); MACs 5.7G from "
               "torchvision model docs / Bianco et al. 2018 (paper: ~5G mult-adds)",
        convention=f"{_PARAMS_BN}; {_CONV_FC}; no auxiliary classifier", params_include_biases=True),
    "inception_v4": dict(
        title="Inception-v4",
        paper="Szegedy et al., Inception-v4, Inception-ResNet and the Impact of Residual "
              "Connections on Learning, AAAI 2017",
        input=(1, 3, 299, 299), params=42_700_000, macs=12.3e9, approx=True,
        source="Bianco et al. 2018 / Cadene pretrained-models tables: ~42.7M params, ~12.3G MACs",
        convention=f"{_PARAMS_BN}; {_CONV_FC}; no auxiliary classifier", params_include_biases=True),
    "inception_resnet_v2": dict(
        title="Inception-ResNet-v2",
        paper="Szegedy et al., Inception-v4, Inception-ResNet and the Impact of Residual "
              "Connections on Learning, AAAI 2017",
        input=(1, 3, 299, 299), params=55_800_000, macs=13.2e9, approx=True,
        source="Keras Applications table (55.87M params); MACs ~13.2G from Bianco et al. 2018",
        convention=f"{_PARAMS_BN}; {_CONV_FC}; no auxiliary classifier", params_include_biases=True),
    "xception": dict(
        title="Xception",
        paper="Chollet, Xception: Deep Learning with Depthwise Separable Convolutions, CVPR 2017",
        input=(1, 3, 299, 299), params=22_855_952, macs=8.4e9, approx=True,
        source="Chollet 2017, Table 3 (22,855,952 params); MACs ~8.4G from Bianco et al. 2018",
        convention=f"{_PARAMS_BN}; {_CONV_FC}", params_include_biases=True),
    "resnet18": dict(
        title="ResNet-18",
        paper="He, Zhang, Ren & Sun, Deep Residual Learning for Image Recognition, CVPR 2016 (Table 1)",
        input=(1, 3, 224, 224), params=11_689_512, macs=1.8e9, approx=False,
        source="He et al. 2016, Table 1 (1.8G FLOPs = mult-adds); params 11,689,512 (torchvision)",
        convention=f"{_PARAMS_BN}; {_CONV_FC}", params_include_biases=True),
    "resnet34": dict(
        title="ResNet-34",
        paper="He, Zhang, Ren & Sun, Deep Residual Learning for Image Recognition, CVPR 2016 (Table 1)",
        input=(1, 3, 224, 224), params=21_797_672, macs=3.6e9, approx=False,
        source="He et al. 2016, Table 1 (3.6G FLOPs = mult-adds); params 21,797,672 (torchvision)",
        convention=f"{_PARAMS_BN}; {_CONV_FC}", params_include_biases=True),
    "resnet50": dict(
        title="ResNet-50",
        paper="He, Zhang, Ren & Sun, Deep Residual Learning for Image Recognition, CVPR 2016 (Table 1)",
        input=(1, 3, 224, 224), params=25_557_032, macs=3.9e9, approx=False,
        source="He et al. 2016, Table 1 (3.8G FLOPs = mult-adds); Sze et al. 2017, Table 3 "
               "(25.5M weights, 3.9G MACs); 4.1G for the torchvision variant with stride on the 3x3",
        convention=f"{_PARAMS_BN}; {_CONV_FC}; stride 2 on branch2a 1x1 (original Caffe model)",
        params_include_biases=True),
    "resnet101": dict(
        title="ResNet-101",
        paper="He, Zhang, Ren & Sun, Deep Residual Learning for Image Recognition, CVPR 2016 (Table 1)",
        input=(1, 3, 224, 224), params=44_549_160, macs=7.6e9, approx=False,
        source="He et al. 2016, Table 1 (7.6G FLOPs = mult-adds); params 44,549,160 (torchvision)",
        convention=f"{_PARAMS_BN}; {_CONV_FC}; stride 2 on branch2a 1x1 (original Caffe model)",
        params_include_biases=True),
    "resnet152": dict(
        title="ResNet-152",
        paper="He, Zhang, Ren & Sun, Deep Residual Learning for Image Recognition, CVPR 2016 (Table 1)",
        input=(1, 3, 224, 224), params=60_192_808, macs=11.3e9, approx=False,
        source="He et al. 2016, Table 1 (11.3G FLOPs = mult-adds); params 60,192,808 (torchvision)",
        convention=f"{_PARAMS_BN}; {_CONV_FC}; stride 2 on branch2a 1x1 (original Caffe model)",
        params_include_biases=True),
    "resnext50_32x4d": dict(
        title="ResNeXt-50 (32x4d)",
        paper="Xie et al., Aggregated Residual Transformations for Deep Neural Networks, CVPR 2017 (Table 1)",
        input=(1, 3, 224, 224), params=25_000_000, macs=4.2e9, approx=False,
        source="Xie et al. 2017, Table 1 (25.0M params, 4.2G FLOPs = mult-adds)",
        convention=f"{_PARAMS_BN}; {_CONV_FC}; stride 2 on the grouped 3x3", params_include_biases=True),
    "squeezenet1_0": dict(
        title="SqueezeNet 1.0",
        paper="Iandola et al., SqueezeNet: AlexNet-level accuracy with 50x fewer parameters "
              "and <0.5MB model size, arXiv 2016",
        input=(1, 3, 227, 227), params=1_248_424, macs=830e6, macs_input=(1, 3, 224, 224), approx=True,
        source="Iandola et al. 2016, Table 1 (1.25M params); MACs ~830M at 224x224 from widely used "
               "tables (torchvision docs 0.82 GFLOPS); the Caffe deploy's 227x227 input gives ~0.86G",
        convention=f"{_PARAMS_B}; {_CONV_FC}", params_include_biases=True),
    "squeezenet1_1": dict(
        title="SqueezeNet 1.1",
        paper="Iandola et al., SqueezeNet (v1.1 from the DeepScale/SqueezeNet repository), 2016",
        input=(1, 3, 227, 227), params=1_235_496, macs=350e6, macs_input=(1, 3, 224, 224), approx=True,
        source="DeepScale/SqueezeNet v1.1 README (2.4x less computation than 1.0); ~1.24M params, "
               "~350M MACs at 224x224 (torchvision docs 0.35 GFLOPS); the Caffe deploy's 227x227 "
               "input gives ~0.39G",
        convention=f"{_PARAMS_B}; {_CONV_FC}", params_include_biases=True),
    "mobilenet_v1": dict(
        title="MobileNet v1 (1.0, 224)",
        paper="Howard et al., MobileNets: Efficient CNNs for Mobile Vision Applications, arXiv 2017",
        input=(1, 3, 224, 224), params=4_200_000, macs=569e6, approx=False,
        source="Howard et al. 2017, Table 8 (4.2M params, 569M mult-adds)",
        convention=f"{_PARAMS_BN}; {_CONV_FC}; depthwise conv counted per group", params_include_biases=True),
    "mobilenet_v2": dict(
        title="MobileNet v2 (1.0, 224)",
        paper="Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018",
        input=(1, 3, 224, 224), params=3_504_872, macs=300e6, approx=False,
        source="Sandler et al. 2018, Table 4 (300M MACs; the table rounds params to 3.4M, the "
               "architecture of its Table 2 has 3,504,872 as in torchvision/Keras)",
        convention=f"{_PARAMS_BN}; {_CONV_FC}; depthwise conv counted per group", params_include_biases=True),
    "shufflenet_v1_g3": dict(
        title="ShuffleNet v1 (1x, g=3)",
        paper="Zhang et al., ShuffleNet: An Extremely Efficient CNN for Mobile Devices, CVPR 2018",
        input=(1, 3, 224, 224), params=1_900_000, macs=140e6, approx=True,
        source="Zhang et al. 2018, Table 2 (140M FLOPs = mult-adds); ~1.9M params from public "
               "implementations (approximate)",
        convention=f"{_PARAMS_BN}; {_CONV_FC}; group/depthwise conv counted per group",
        params_include_biases=True),
    "densenet121": dict(
        title="DenseNet-121 (k=32)",
        paper="Huang et al., Densely Connected Convolutional Networks, CVPR 2017",
        input=(1, 3, 224, 224), params=7_978_856, macs=2.83e9, approx=False,
        source="torchvision model documentation: 7,978,856 params, 2.83 GFLOPS (its GFLOPS are "
               "multiply-adds); Huang et al. 2017 read ~2.9G off a plot (Figure 3)",
        convention=f"{_PARAMS_BN}; {_CONV_FC}", params_include_biases=True),
}
