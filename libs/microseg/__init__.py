"""microseg: customer micro-segmentation at enterprise scale on Apache Spark."""

__version__ = "0.1.0"
