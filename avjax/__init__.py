"""avjax: JAX/Flax toolkit for audio-visual emotion recognition."""

__version__ = "0.1.0"
