"""Encoders: the interface every encoder offers (``base``), the DOFA encoder, frozen or with its trained image
adapter (``dofa``, ``adapter``), organism CLIP encoders (``organism``), relevé encoders, and the registry that
loads any of them by name or run directory (``registry.load_encoder``)."""
