"""MedSafetyWorld: a closed synthetic medical world for safety-pretraining research."""

__version__ = "0.2.0"
BENCHMARK_VERSION = "2.0"
