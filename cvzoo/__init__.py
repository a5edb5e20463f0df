"""cvzoo: an open model zoo and deployment toolchain for image-classification backbones.

Deploy-side names (cards, preprocessing, Predictor, engines) import without torch; the model-side
names (create_model, export, build...) import torch on first use.
"""
from importlib import import_module

__version__ = "0.1.0"

# public name -> (module, attribute); names differ from the verb modules (cvzoo.export, cvzoo.build, ...)
_LAZY = {
    "list_models": ("cvzoo.card", "list_models"), "get_card": ("cvzoo.card", "get_card"),
    "ModelCard": ("cvzoo.card", "ModelCard"), "CvzooError": ("cvzoo.errors", "CvzooError"),
    "create_model": ("cvzoo.models", "create_model"), "profile_model": ("cvzoo.profile", "profile_model"),
    "export_model": ("cvzoo.export", "export"), "build_artifact": ("cvzoo.build", "build"),
    "load_build_config": ("cvzoo.buildconfig", "load_config"),
    "Predictor": ("cvzoo.predict", "Predictor"), "load_engine": ("cvzoo.engines", "load_engine"),
    "preprocess_image": ("cvzoo.preprocess", "preprocess_image"),
    "evaluate_model": ("cvzoo.evaluate", "evaluate"), "bench_model": ("cvzoo.bench", "bench"),
    "run_sweep": ("cvzoo.sweep", "sweep"),
}

__all__ = list(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'cvzoo' has no attribute {name!r}")
