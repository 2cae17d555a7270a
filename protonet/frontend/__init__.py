"""The frontend: Caffe files in, an upgraded, phase-filtered, deploy-form NetParameter out.

Modules, each importing only those before it:
``schema`` (the message classes; a user's caffe.proto compiled at run time) -> ``dialects`` (a user's
schema translated into protonet's by field name; fork fields protonet does not implement) ->
``reader`` (bytes or text -> NetParameter; ``is_binary``) ->
``blobs`` (BlobProto <-> numpy) -> ``legacy``, ``upgrade`` (NetParameter -> NetParameter, no file
I/O) -> ``phase`` -> ``python_layers`` (known Python layers by name) -> ``preprocess``, ``deploy``
-> ``wire``, ``weights`` (caffemodel -> arrays) -> ``load`` (the orchestrator: read -> upgrade ->
phase filter -> deploy; a caffemodel alone as a net; ``upgrade_file``).
"""
from __future__ import annotations

from .load import deploy_step, dialect_step, load_net, net_from_caffemodel, prepare, upgrade_file
from .phase import filter_phase
from .reader import LoadedNet, is_binary, read_net, read_net_bytes, read_text
from .upgrade import upgrade_net
from .weights import WeightsFile, caffemodel_bytes, load_caffemodel, looks_like_caffemodel, write_caffemodel

__all__ = ["LoadedNet", "WeightsFile", "caffemodel_bytes", "deploy_step", "dialect_step", "filter_phase", "is_binary",
           "load_caffemodel", "load_net", "looks_like_caffemodel", "net_from_caffemodel", "prepare", "read_net", "read_net_bytes",
           "read_text", "upgrade_file",
           "upgrade_net", "write_caffemodel"]
