"""Model families. Only MERT (HuBERT-shaped) for now: see ``messai.models.mert``."""
