"""Import this module to load exported models with transformers' Auto classes (no trust_remote_code needed):

    import transfer_cli.hf
    from transformers import pipeline
    classify = pipeline("text-classification", model="exported/")
"""

from .models.exported import TransferClassifierConfig, TransferForSequenceClassification  # noqa: F401 (registers them)
