"""cohere-cli: chat, quantize and benchmark Cohere's Command-R family locally."""

__version__ = "0.1.0"
