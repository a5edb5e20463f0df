"""cvzoo: an open model zoo and deployment toolchain for image-classification backbones.

Deploy-side names (cards, preprocessing, Predictor, engines) import without torch; the model-side
names (create_model, export, build...) import torch on first use.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "list_models": "cvzoo.card", "get_card": "cvzoo.card", "ModelCard": "cvzoo.card",
    "CvzooError": "cvzoo.errors",
    "create_model": "cvzoo.models",
    "profile_model": "cvzoo.profile",
    "export": "cvzoo.export",
    "Predictor": "cvzoo.predict",
    "load_engine": "cvzoo.engines",
    "preprocess_image": "cvzoo.preprocess",
}

__all__ = list(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cvzoo' has no attribute {name!r}")
