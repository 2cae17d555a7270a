"""protonet's version: a leaf module, so that modules deep in the package (the exporter's
``producer_version``, the CLI's ``--version``) read it without importing the package itself."""
__version__ = "0.1.0"
