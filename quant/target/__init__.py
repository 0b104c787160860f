"""Deployment targets: which per-layer forms a runtime executes (``forms``), and how sessions are run
(``runtime``)."""

from .forms import (
    FORM_NAMES,
    FORMS,
    TARGETS,
    Form,
    FormError,
    form_by_name,
    form_for_bits,
    form_weight_bytes,
    forms_for,
    layer_kind,
)

__all__ = [
    "FORMS",
    "FORM_NAMES",
    "TARGETS",
    "Form",
    "FormError",
    "form_by_name",
    "form_for_bits",
    "form_weight_bytes",
    "forms_for",
    "layer_kind",
]
