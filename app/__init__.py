"""facegen: a service for deep generative models of faces."""

__version__ = "0.1.0"
