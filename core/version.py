"""chatcore's version (re-exported as ``chatcore.__version__``; read by the build)."""

__version__ = "0.1.0"
