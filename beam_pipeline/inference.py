"""Beam's RunInference, ModelHandler and WatchFilePattern, imported without the ModelManager that alexlabel never uses.

apache_beam.ml.inference.base imports its ModelManager, and with it scipy.optimize (a part of labeling's start-up:
BENCHMARKS.md, "Start-up"), in a try whose fallback imports it where a job asks for one
(RunInference(use_model_manager=True)); alexlabel never does. The module is marked missing while base loads, so
Beam takes that fallback, and `resource`, which the same try imports for memory readings, is put back.
"""
import resource
import sys

_MANAGER = "apache_beam.ml.inference.model_manager"


def _import_base_without_manager() -> None:
    if "apache_beam.ml.inference.base" in sys.modules or _MANAGER in sys.modules:
        return
    sys.modules[_MANAGER] = None  # import raises ImportError for a None entry
    try:
        from apache_beam.ml.inference import base
    finally:
        del sys.modules[_MANAGER]
    base.resource = resource


_import_base_without_manager()
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference  # noqa: E402
from apache_beam.ml.inference.utils import WatchFilePattern  # noqa: E402

__all__ = ["ModelHandler", "PredictionResult", "RunInference", "WatchFilePattern"]
