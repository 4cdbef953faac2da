"""CLI verbs in their own modules: each exposes ``register(subparsers) -> {verb: function}``."""
