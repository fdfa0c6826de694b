"""The representation study of REPA: alignment metrics, feature extraction, linear probes, ``repa analyze``.

``cknna``, ``cka`` and ``mutual_knn`` are pure functions of two (N, D) feature matrices; ``extract_features`` reads
a model's hidden states at one diffusion time; ``linear_probe`` trains a learning-rate grid of linear classifiers
at once; ``run_analysis`` ties them together for checkpoints (see docs/ANALYSIS.md).
"""
from repa.analysis.features import FeatureSet, encoder_features, extract_features
from repa.analysis.metrics import cka, cknna, l2_normalize, mutual_knn
from repa.analysis.probe import ProbeResult, fit_linear_probes, linear_probe
from repa.analysis.run import AnalyzeOptions, alignment_scores, analyze_features, analyze_model, run_analysis

__all__ = ["cknna", "cka", "mutual_knn", "l2_normalize", "FeatureSet", "extract_features", "encoder_features",
           "ProbeResult", "linear_probe", "fit_linear_probes", "AnalyzeOptions", "alignment_scores",
           "analyze_features", "analyze_model", "run_analysis"]
