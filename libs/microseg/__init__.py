"""microseg: customer micro-segmentation at enterprise scale on Apache Spark."""

try:  # stamped by setuptools-scm when the package is built (pyproject.toml)
    from microseg._version import version as __version__
except ImportError:  # a source tree never built or installed
    __version__ = "0+unknown"
