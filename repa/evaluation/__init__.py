"""Evaluation: sampling at scale to ADM ``.npz`` files, and FID / sFID / IS / precision / recall (ADM definitions).

- ``frechet_distance``, ``FeatureStats``: Frechet distance and float64 streaming statistics (``fid.py``).
- ``load_inception``: the TF Inception 2015-12-05 network from a local TorchScript file (``inception.py``).
- ``precision_recall``: ADM's k-NN manifold precision and recall (``prdc.py``).
- ``open_samples``, ``open_reference``: checked access to ADM ``.npz`` files (``npz.py``).
- ``compute_metrics``, ``stats_from_images``, ``fid_from_images``: the metrics (``evaluate.py``).
- ``generate_images``, ``sample_to_npz``: reproducible sampling (``generate.py``).
"""
from repa.evaluation.evaluate import (ReferenceStats, compute_metrics, evaluate_samples, fid_from_images,
                                      stats_from_images)
from repa.evaluation.fid import FeatureStats, frechet_distance, load_stats, save_stats
from repa.evaluation.generate import generate_images, sample_to_npz
from repa.evaluation.inception import InceptionV3, inception_score, load_inception, load_logits
from repa.evaluation.npz import NpzFormatError, open_reference, open_samples
from repa.evaluation.prdc import precision_recall

__all__ = ["FeatureStats", "InceptionV3", "NpzFormatError", "ReferenceStats", "compute_metrics",
           "evaluate_samples", "fid_from_images", "frechet_distance", "generate_images", "inception_score",
           "load_inception", "load_logits", "load_stats", "open_reference", "open_samples", "precision_recall",
           "sample_to_npz", "save_stats", "stats_from_images"]
