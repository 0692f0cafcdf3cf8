"""imagespace: turn folders of images into a searchable space of vectors, offline."""

__version__ = "0.1.0"
