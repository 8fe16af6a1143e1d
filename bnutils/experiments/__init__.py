from .figure3 import figure3  # noqa: F401
