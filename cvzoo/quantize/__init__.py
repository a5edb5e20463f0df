"""int8 quantization: calibration statistics (stats), recovery steps (recovery), node sensitivity (sensitivity),
the guard's measurement (guard), the graph forms (forms), and the search that ties them (plan)."""
from .forms import Int8Form
from .guard import Fidelity, measure_fidelity
from .plan import Int8Build, manifest_sections, quantize_int8

__all__ = ["Fidelity", "Int8Build", "Int8Form", "manifest_sections", "measure_fidelity", "quantize_int8"]
