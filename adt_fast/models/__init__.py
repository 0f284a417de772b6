"""Classifiers used by adt_fast (the ADT generators live in :mod:`adt_fast.models.generators`)."""

from .classifiers import ARCHS, Classifier, ClassifierHead, build_model
from .external import (ExternalModelError, Normalized, build_classifier, classifier_config, is_factory_spec,
                       load_external_model)

__all__ = ["ARCHS", "Classifier", "ClassifierHead", "build_model", "build_classifier", "classifier_config",
           "is_factory_spec", "ExternalModelError", "Normalized", "load_external_model"]
