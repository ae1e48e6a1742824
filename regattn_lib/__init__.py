"""regattn: regional attention based deep features for image retrieval (Kim & Yoon, BMVC 2018)."""

__version__ = "0.1.0"
