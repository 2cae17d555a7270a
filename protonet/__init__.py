"""protonet: Caffe prototxt -> graph IR -> ONNX, verified against a numpy reference."""
__version__ = "0.1.0"
